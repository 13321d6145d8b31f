"""The measure registry: every group of ``compute`` is one registered function, and together the groups produce
every measure name ``compute`` produced before it was split into them (the names below, in their order)."""

import torch
from torch import nn

from geomopt.measures import GROUPS, MEASURES, compute

# what compute(measures="all") returned for a fitted Linear-ReLU-Linear net with init_model, before the registry
NAMES = [
    "num_examples", "num_params", "margin", "margin_min", "margin_median", "train_loss", "train_error", "dist_init",
    "log_frobenius_product", "frobenius_product", "log_spectral_product", "spectral_product", "sum_frobenius",
    "sum_spectral", "frobenius_over_spectral", "log_spectral_complexity_unnormalized", "depth",
    "dist_init_frobenius_sum", "dist_init_spectral_sum", "layers", "l1_path", "l2_path", "log_frobenius_over_margin",
    "frobenius_over_margin", "log_spectral_over_margin", "spectral_over_margin", "log_l1_path_over_margin",
    "l1_path_over_margin", "log_l2_path_over_margin", "l2_path_over_margin", "log_spectral_complexity_over_margin",
    "spectral_complexity_over_margin", "log_exploring_l2_over_margin", "exploring_l2_over_margin",
    "log_exploring_spectral_over_margin", "exploring_spectral_over_margin", "log_bartlett_bound", "bartlett_bound",
    "pac_bayes_spectral_bound", "log_pac_bayes_spectral_bound", "sharpness", "sharpness_max_loss", "pacbayes_sigma",
    "pacbayes_flatness", "pacbayes_kl", "pacbayes_expected_error", "pacbayes_bound", "pacbayes_evaluations",
    "pacbayes_mag_sigma", "pacbayes_mag_flatness", "pacbayes_mag_kl", "pacbayes_mag_expected_error",
    "pacbayes_mag_bound", "pacbayes_mag_evaluations", "width", "dist_U", "dist_U_21", "max_unit_dist", "dist_V",
    "dist_V_21", "fro_U", "fro_V", "max_out_norm", "spec_U", "spec_V", "spec_U0", "l1max_U", "l1max_V", "vc_bound",
    "l1max_bound", "frobenius_bound", "spectral_l1_bound", "spectral_fro_bound", "overparam_bound",
    "hessian_top_eigenvalue", "hessian_trace", "hessian_top_eigenvalue_normalized", "hessian_trace_normalized",
    "hessian_products", "hessian_converged", "warnings", "settings",
]
OPTIONS = dict(sharpness_steps=2, sharpness_restarts=1, flatness_samples=2, hessian_examples=20)


def _fitted():
    torch.manual_seed(0)
    model, init = (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)) for _ in range(2))
    x = torch.randn(40, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model fits its labels: a positive margin
    return model, init, [(x[:20], y[:20]), (x[20:], y[20:])]


def test_every_group_is_one_documented_function():
    assert list(MEASURES) == list(GROUPS)
    for name, fn in MEASURES.items():
        assert callable(fn) and fn.__doc__ and len(fn.__doc__.split()) > 8, name


def test_the_groups_produce_every_measure_name_in_order():
    model, init, batches = _fitted()
    assert list(compute(model, batches, init_model=init, **OPTIONS)) == NAMES
    each = set(compute(model, batches, init_model=init, measures=["path", "bounds"], **OPTIONS))
    for group in GROUPS:
        each |= set(compute(model, batches, init_model=init, measures=[group], **OPTIONS))
    assert each == set(NAMES)  # the path norms over the margin need both path and bounds
