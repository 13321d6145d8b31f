r"""Capacity measures of two-layer ReLU networks as the width H grows.

Neyshabur, Li, Bhojanapalli, LeCun & Srebro, "Towards Understanding the Role of Over-Parametrization
in Generalization of Neural Networks", ICLR 2019. For ``f(x) = V [U x + b]_+ (+ c)`` with ``U`` (H, d)
and ``V`` (C, H), ``U0``/``V0`` at initialization, ``m`` training points ``x_i`` and margin ``gamma``
(the 5th percentile of the signed training margins), their bound (Theorem 2, with the constants of the
authors' public code) is

    R = 3 sqrt(2) (sqrt(2C) + 1) (||V||_F + 1) (sqrt(E ||[U0 x + b0]_+||^2) + ||U - U0||_F sqrt(E ||x||^2) + 1) / gamma
    overparam_bound = (R + 3 sqrt(5H + log(max(1, gamma sqrt(m)) / delta)))^2,

built on the unit-wise distances ``||u_i - u_i^0||`` (rows of U) and the output norms ``||v_i||``
(columns of V). Beside it, the capacity terms the paper compares it with, each written as ``m`` times a
squared generalization gap, like the bound above:

- ``vc_bound``: VC dimension of piecewise-linear nets (Harvey, Liaw & Mehrabian 2017), ~ #parameters;
- ``l1max_bound``: ``||U||_{1,inf} ||V||_{1,inf}`` (Bartlett & Mendelson 2002), with ``max_i ||x_i||_inf``;
- ``frobenius_bound``: ``||U||_F ||V||_F`` (Neyshabur, Tomioka & Srebro 2015);
- ``spectral_l1_bound``: spectral norms times (2,1)-distances to init (Bartlett, Foster & Telgarsky 2017);
- ``spectral_fro_bound``: spectral norms times Frobenius distances (Neyshabur, Bhojanapalli & Srebro 2018).

Expectations over x are means over the training set. Deviations from the public code, on purpose: the
margin is the signed margin ``f_y - max_{j != y} f_j`` (the public code's ``f_y - f_pred`` is never
positive), and ``||x||_inf`` is the largest over the training set (not a per-batch average).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from geomopt.checks import check_number
from geomopt.measures.layers import MeasureError
from geomopt.measures.norms import margin_quantile, margins

# ingredients and bounds, in the order of the paper's comparison
BOUNDS = ("vc_bound", "l1max_bound", "frobenius_bound", "spectral_l1_bound", "spectral_fro_bound", "overparam_bound")


def two_layer_weights(model: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The hidden and output layers ``(U, V)`` of ``[Flatten ->] Linear -> ReLU [-> Dropout] -> Linear``.

    Raises:
        MeasureError: the model is not a two-layer ReLU network, naming what it has instead.
    """
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    kinds = [m for _, m in leaves if not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout))]
    if (len(kinds) == 3 and isinstance(kinds[0], nn.Linear) and isinstance(kinds[1], nn.ReLU)
            and isinstance(kinds[2], nn.Linear)):
        return kinds[0], kinds[2]
    described = ", ".join(f"{name or '<root>'} ({type(m).__name__})" for name, m in leaves)
    raise MeasureError(f"the over-parametrization measures (Neyshabur et al. 2019) are defined for two-layer ReLU "
                       f"networks x -> V relu(U x + b) + c; {type(model).__name__} has the layers [{described}]. "
                       "Train an MLP with one hidden layer (--model mlp --widths H).")


def _data_statistics(batches: Iterable[tuple[Tensor, Tensor]], hidden0: nn.Linear) -> dict[str, float]:
    """m, E||x||^2, max ||x||^2, max ||x||_inf and E||[U0 x + b0]_+||^2 over the training set (float64)."""
    m, sq, sq_max, inf_max, init_sq = 0, 0.0, 0.0, 0.0, 0.0
    w0 = hidden0.weight.detach().double()
    b0 = hidden0.bias.detach().double() if hidden0.bias is not None else None
    for x, _ in batches:
        x = x.reshape(x.shape[0], -1).to(w0.device, torch.float64)
        norms = (x * x).sum(1)
        m += x.shape[0]
        sq += float(norms.sum())
        sq_max = max(sq_max, float(norms.max()))
        inf_max = max(inf_max, float(x.abs().max()))
        z = torch.relu(torch.nn.functional.linear(x, w0, b0))
        init_sq += float((z * z).sum())
    if m == 0:
        raise MeasureError("two-layer measures: the training loader is empty")
    return {"m": m, "mean_sq": sq / m, "max_sq": sq_max, "max_inf": inf_max, "init_hidden_sq": init_sq / m}


def two_layer_measures(model: nn.Module, init_model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *,
                       margin: float | None = None, margin_q: float = 0.05, delta: float = 0.01) -> dict[str, float]:
    """The 2019 bound, its ingredients and the capacity terms it is compared with (module docstring).

    Args:
        model: the trained two-layer ReLU network; ``init_model``: the same network at initialization.
        batches: the training set as ``(x, y)`` batches (read twice: margins, then data statistics).
        margin: gamma; default: the ``margin_q`` quantile of the signed training margins.
        delta: the bounds' failure probability.

    Returns:
        Unit-wise ingredients (``dist_U`` = ||U - U0||_F = the l2 norm of the unit-wise distances,
        ``dist_U_21`` = their sum, ``dist_V``, ``fro_U``, ``fro_V``, ``spec_U``, ``spec_V``, ``spec_U0``,
        ``l1max_U``, ``l1max_V``, ``max_unit_dist``, ``max_out_norm``), ``margin``, ``num_params`` and
        every entry of :data:`BOUNDS`; a non-positive margin makes the margin-normalized bounds inf.

    Raises:
        MeasureError: not a two-layer ReLU net, init of another shape, or NaN/inf weights (named).
    """
    if margin is not None:
        check_number("two_layer_measures", "margin", margin)
    check_number("two_layer_measures", "margin_q", margin_q, low=0, high=1)
    check_number("two_layer_measures", "delta", delta, low=0, high=1, low_open=True, high_open=True)
    u_layer, v_layer = two_layer_weights(model)
    u0_layer, v0_layer = two_layer_weights(init_model)
    for name, a, b in (("hidden", u_layer, u0_layer), ("output", v_layer, v0_layer)):
        if a.weight.shape != b.weight.shape:
            raise MeasureError(f"two-layer measures: the {name} layer has shape {tuple(a.weight.shape)} but its "
                               f"initialization {tuple(b.weight.shape)}")
    for label, layer in (("hidden (U)", u_layer), ("output (V)", v_layer)):
        if not torch.isfinite(layer.weight).all():
            raise MeasureError(f"two-layer measures: the {label} layer's weight holds NaN or inf")
    batches = list(batches)
    device = u_layer.weight.device
    gamma = margin_quantile(margins(model, batches, device), margin_q) if margin is None else float(margin)
    U, V = u_layer.weight.detach().double(), v_layer.weight.detach().double()
    U0, V0 = u0_layer.weight.detach().double(), v0_layer.weight.detach().double()
    H, d = U.shape
    C = V.shape[0]
    data = _data_statistics(batches, u0_layer)
    m = data["m"]
    unit_dist = (U - U0).norm(dim=1)          # ||u_i - u_i^0||, one per hidden unit
    out_norm = V.norm(dim=0)                  # ||v_i||, the outgoing weights of hidden unit i
    num_params = sum(p.numel() for p in model.parameters())
    r = {
        "width": H, "margin": gamma, "num_params": num_params,
        "dist_U": float(unit_dist.norm()), "dist_U_21": float(unit_dist.sum()), "max_unit_dist": float(unit_dist.max()),
        "dist_V": float((V - V0).norm()), "dist_V_21": float((V - V0).norm(dim=1).sum()),
        "fro_U": float(U.norm()), "fro_V": float(out_norm.norm()), "max_out_norm": float(out_norm.max()),
        "spec_U": float(torch.linalg.matrix_norm(U, 2)), "spec_V": float(torch.linalg.matrix_norm(V, 2)),
        "spec_U0": float(torch.linalg.matrix_norm(U0, 2)),
        "l1max_U": float(U.abs().sum(1).max()), "l1max_V": float(V.abs().sum(1).max()),
    }
    log_term = math.log(m / delta)
    # VC dimension of a piecewise-linear net (Harvey et al. 2017) in the form of the authors' code
    units = H + 2 * C
    vc = 2 + num_params * math.log2(8 * math.e * units * math.log2(4 * math.e * units)) * \
        (2 * (d + 1) * H + (H + 1) * C) / ((d + 1) * H + (H + 1) * C)
    r["vc_bound"] = 8 * (C * vc * math.log(math.e * max(m / vc, 1.0))) + 8 * math.log(2 / delta)
    if gamma <= 0:
        for key in BOUNDS[1:]:
            r[key] = math.inf
        return r
    root_sq = math.sqrt(data["mean_sq"])
    R = 8 * C * r["l1max_U"] * r["l1max_V"] * 2 * math.sqrt(math.log(d)) * data["max_inf"] / gamma
    r["l1max_bound"] = (R + 3 * math.sqrt(log_term)) ** 2
    R = 8 * math.sqrt(C) * r["fro_U"] * r["fro_V"] * root_sq / gamma
    r["frobenius_bound"] = (R + 3 * math.sqrt(log_term)) ** 2
    R = (144 * math.log(m) * math.log(2 * num_params) * (root_sq + 1 / math.sqrt(m))
         * ((r["spec_V"] * r["dist_U_21"]) ** (2 / 3) + (r["spec_U"] * r["dist_V_21"]) ** (2 / 3)) ** 1.5 / gamma)
    extra = (4.5 * math.log(1 / delta) + math.log(2 * m / gamma) + 2 * math.log(2 + math.sqrt(m * data["mean_sq"]))
             + 2 * math.log((2 + 2 * r["dist_U"]) * (2 + 2 * r["dist_V"]) * (2 + 2 * r["spec_U"]) * (2 + 2 * r["spec_V"])))
    r["spectral_l1_bound"] = (R + math.sqrt(extra)) ** 2
    R = (42 * 8 * r["spec_U"] * math.sqrt(math.log(8 * H)) * math.sqrt(data["max_sq"])
         * math.sqrt(H * (r["spec_V"] * r["dist_U"]) ** 2 + C * (r["spec_U"] * r["dist_V"]) ** 2) / (math.sqrt(2) * gamma))
    r["spectral_fro_bound"] = R ** 2 + 6 * math.log(2 * m / delta)
    R = (3 * math.sqrt(2) * (math.sqrt(2 * C) + 1) * (r["fro_V"] + 1)
         * (math.sqrt(data["init_hidden_sq"]) + r["dist_U"] * root_sq + 1) / gamma)
    r["overparam_bound"] = (R + 3 * math.sqrt(5 * H + math.log(max(1.0, gamma * math.sqrt(m)) / delta))) ** 2
    return r
