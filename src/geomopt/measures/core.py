r"""``geomopt.measures.compute``: every generalization measure of a trained classifier, in one dict.

Groups (``measures='all'`` or a list of group names):

Every group first checks the parameters: a NaN/inf entry raises ``ValueError`` naming the parameter.
The training loss is evaluated only for the groups that use it (margin, sharpness, flatness).

- ``margin``: ``margin`` = the ``margin_quantile`` quantile (default 0.05, the 5th percentile, as in the
  code of Neyshabur et al. 2017) of the SIGNED training margins ``f(x)_y - max_{j != y} f(x)_j``
  (``torch.quantile``, linear interpolation); a non-positive margin makes the margin-normalized
  measures NaN (with a warning in ``result["warnings"]``); ``train_loss``, ``train_error``.
- ``norms``: ``frobenius_product``, ``spectral_product`` (exact operator norms), their logs, sums,
  ``dist_init`` = ``||w - w0||_2`` over all parameters and layer-wise distances (needs ``init_model``),
  ``num_params``; per-layer numbers in ``result["layers"]``.
- ``path``: ``l1_path = (sum_paths prod |w|)^2`` and ``l2_path = sum_paths prod w^2`` (squared network of
  :mod:`geomopt.geometry`; biases are edges, max-pool counts every path).
- ``bounds``: margin-normalized forms (``*_over_margin`` = measure / margin^2), the spectral complexity,
  the Bartlett et al. (2017) bound and the PAC-Bayes spectral bound of Neyshabur et al. (2018); see
  :mod:`geomopt.measures.norms`.
- ``sharpness``: worst-case sharpness in the box ``|nu| <= alpha (|w| + 1)`` by projected ascent.
- ``two_layer``: for a two-layer ReLU net only, the capacity bound of Neyshabur et al. (2019) with its
  unit-wise ingredients and the capacity terms it is compared with (:mod:`geomopt.measures.two_layer`;
  needs ``init_model``; ``delta`` is the bounds' failure probability).
- ``hessian``: top eigenvalue and trace of the training loss's Hessian and their magnitude-normalized
  forms (:mod:`geomopt.measures.hessian`; ``hessian_examples`` training examples).
- ``flatness``: PAC-Bayes flatness, isotropic (``pacbayes_*``) and magnitude-aware (``pacbayes_mag_*``):
  sigma, ``1/sigma^2``, KL term, bound value, loss evaluations spent.

Norm and path measures need a positively homogeneous network: BatchNorm (eval) is folded into the
preceding layer first; a model that cannot be folded, or a path norm of an unsupported module, raises
:class:`MeasureError` when that group was asked for by name, and is reported in ``warnings`` (and
skipped) under ``measures='all'``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from geomopt.checks import check_int, check_number
from geomopt.curvature.operators import read_batches
from geomopt.geometry import path_norm
from geomopt.geometry.path_norm import UnsupportedModuleError
from geomopt.measures.hessian import hessian_measures
from geomopt.measures.layers import MeasureError, fold_batchnorm, has_batchnorm, weighted_layers
from geomopt.measures.norms import bartlett_log_r, layer_norms, margin_quantile as quantile, margins, norm_measures
from geomopt.measures.sharpness import (DatasetObjective, kl_term, pac_bayes_bound, search_sigma,
                                        worst_case_sharpness)
from geomopt.measures.two_layer import two_layer_measures
from geomopt.checks import check_finite_parameters

GROUPS = ("margin", "norms", "path", "bounds", "sharpness", "flatness", "hessian", "two_layer")


def _groups(measures: str | Sequence[str]) -> tuple[list[str], bool]:
    if measures == "all":
        return list(GROUPS), False
    if isinstance(measures, str):
        measures = [measures]
    unknown = [m for m in measures if m not in GROUPS]
    if unknown:
        raise ValueError(f"unknown measure group(s) {unknown}; choose from {list(GROUPS)} or 'all'")
    return list(measures), True


#: The numeric options of :func:`compute` and their ranges (:mod:`geomopt.checks`); None allowed for the
#: ``*_examples`` (all examples).
_OPTION_RULES: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "margin_quantile": (check_number, dict(low=0, high=1)),
    "sharpness_alpha": (check_number, dict(low=0, low_open=True)),
    "sharpness_steps": (check_int, dict(low=1)),
    "sharpness_restarts": (check_int, dict(low=1)),
    "sharpness_examples": (check_int, dict(low=1)),
    "flatness_threshold": (check_number, dict(low=0, low_open=True)),
    "flatness_samples": (check_int, dict(low=1)),
    "flatness_examples": (check_int, dict(low=1)),
    "magnitude_eps": (check_number, dict(low=0)),
    "delta": (check_number, dict(low=0, high=1, low_open=True, high_open=True)),
    "hessian_examples": (check_int, dict(low=1)),
    "seed": (check_int, {}),
}


def _check_options(**options: Any) -> None:
    for key, value in options.items():
        if value is None and key.endswith("_examples"):
            continue
        check, rule = _OPTION_RULES[key]
        check("measures", key, value, **rule)


def _batches(loader: DataLoader | Sequence[tuple[Tensor, Tensor]], limit: int | None) -> list[tuple[Tensor, Tensor]]:
    return read_batches(loader, None, limit, what="measures: the training loader")


def _log(x: float) -> float:
    return math.log(x) if x > 0 else float("-inf")


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


def compute(model: nn.Module, train_loader: DataLoader | Sequence[tuple[Tensor, Tensor]],
            init_model: nn.Module | None = None, measures: str | Sequence[str] = "all",
            margin_quantile: float = 0.05, *,
            loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
            device: str | torch.device = "cpu", input_shape: Sequence[int] | None = None,
            sharpness_alpha: float = 5e-4, sharpness_steps: int = 20, sharpness_restarts: int = 3,
            sharpness_examples: int | None = None, flatness_threshold: float = 0.1, flatness_samples: int = 10,
            flatness_metric: str = "loss", flatness_examples: int | None = None, magnitude_eps: float = 1e-3,
            delta: float = 0.05, hessian_examples: int | None = 1000, spectral_method: str = "auto", seed: int = 0,
            progress: bool = False) -> dict[str, Any]:
    """Compute the generalization measures of a trained classifier.

    Args:
        model: the trained network (outputs ``(batch, classes)`` logits). Not modified.
        train_loader: its training data (DataLoader or a sequence of ``(x, y)`` batches).
        init_model: the network at initialization (for distances to init, the Bartlett reference
            matrices ``M_i`` and the PAC-Bayes prior mean); None: those use 0 and ``dist_*`` are omitted.
        measures: ``'all'`` or group names from ``GROUPS``.
        margin_quantile: quantile of the signed training margins used as ``gamma``.
        loss_fn: mean loss over a batch (cross-entropy).
        input_shape: per-example input shape (default: from the data).
        sharpness_alpha, sharpness_steps, sharpness_restarts: the ascent (see
            :func:`~geomopt.measures.sharpness.worst_case_sharpness`).
        sharpness_examples, flatness_examples: use only the first this many training examples
            (None: all).
        flatness_threshold, flatness_samples, flatness_metric, magnitude_eps: the sigma search (see
            :func:`~geomopt.measures.sharpness.search_sigma`).
        delta: confidence of the bounds.
        hessian_examples: the Hessian measures use the first this many training examples (None: all).
        spectral_method: ``auto``, ``dense`` or ``power`` (conv operator norms).
        seed: seed of the random restarts and Monte-Carlo draws.
        progress: tqdm bars for the slow measures.

    Returns:
        A flat dict of floats (see the module docstring), plus ``layers`` (per-layer norms),
        ``warnings`` (list of str) and ``settings``.

    Raises:
        MeasureError: a measure asked for by name does not apply to this model.
        ValueError: bad options, empty data, or a NaN/inf parameter (named).
    """
    groups, explicit = _groups(measures)
    _check_options(margin_quantile=margin_quantile, sharpness_alpha=sharpness_alpha, sharpness_steps=sharpness_steps,
                   sharpness_restarts=sharpness_restarts, sharpness_examples=sharpness_examples,
                   flatness_threshold=flatness_threshold, flatness_samples=flatness_samples,
                   flatness_examples=flatness_examples, magnitude_eps=magnitude_eps, delta=delta,
                   hessian_examples=hessian_examples, seed=seed)
    if flatness_metric not in ("loss", "error"):
        raise ValueError(f"measures: flatness_metric must be 'loss' or 'error', got {flatness_metric!r}")
    check_finite_parameters(model, "generalization measures")
    if init_model is not None:
        check_finite_parameters(init_model, "generalization measures (init_model)")
    model = model.to(device)
    batches = _batches(train_loader, None)
    m = sum(len(y) for _, y in batches)
    x0 = batches[0][0].to(device)
    input_shape = tuple(input_shape) if input_shape is not None else tuple(x0.shape[1:])
    out: dict[str, Any] = {"num_examples": m, "num_params": sum(p.numel() for p in model.parameters())}
    warnings: list[str] = []
    settings = {"margin_quantile": margin_quantile, "sharpness_alpha": sharpness_alpha,
                "sharpness_steps": sharpness_steps, "sharpness_restarts": sharpness_restarts,
                "flatness_threshold": flatness_threshold, "flatness_samples": flatness_samples,
                "flatness_metric": flatness_metric, "magnitude_eps": magnitude_eps, "delta": delta, "seed": seed,
                "hessian_examples": hessian_examples,
                "measures": groups}

    def skip(group: str, exc: Exception) -> None:
        if explicit:
            raise MeasureError(f"measure group '{group}': {exc}") from exc
        warnings.append(f"{group}: skipped: {exc}")

    need_margin = any(g in groups for g in ("margin", "bounds"))
    gamma = float("nan")
    if need_margin:
        ms = margins(model, batches, device)
        gamma = quantile(ms, margin_quantile)
        out["margin"] = gamma
        out["margin_min"] = float(ms.min())
        out["margin_median"] = float(ms.median())
        if gamma <= 0:
            warnings.append(f"the {margin_quantile:g}-quantile training margin is {gamma:.4g} <= 0 (more than a "
                            f"{margin_quantile:g} fraction of training points misclassified or on the boundary): "
                            "margin-normalized measures are NaN")
    objective = DatasetObjective(model, batches, loss_fn, device)
    params = objective.params()
    if any(g in groups for g in ("margin", "sharpness", "flatness")):
        out["train_loss"], out["train_error"], _ = objective(params)
    init_params = None
    if init_model is not None:
        init_params = {k: v.detach().to(device) for k, v in init_model.named_parameters()}
        if set(init_params) != set(params) or any(init_params[k].shape != params[k].shape for k in params):
            raise ValueError("init_model does not have the same parameters (names and shapes) as model")
        out["dist_init"] = math.sqrt(sum(float(((params[k] - init_params[k]).double() ** 2).sum()) for k in params))

    folded = folded_init = rows = None
    if any(g in groups for g in ("norms", "path", "bounds")):
        try:
            folded = fold_batchnorm(model) if has_batchnorm(model) else model
            folded_init = None
            if init_model is not None:
                folded_init = fold_batchnorm(init_model.to(device)) if has_batchnorm(init_model) else init_model
        except MeasureError as exc:
            skip("norms", exc)
    if folded is not None and any(g in groups for g in ("norms", "bounds")):
        layers = weighted_layers(folded, x0)
        init_layers = weighted_layers(folded_init, x0) if folded_init is not None else None
        rows = layer_norms(layers, init_layers, spectral_method)
        out.update(norm_measures(rows))
        out["layers"] = rows
    if folded is not None and "path" in groups:
        try:
            shape = getattr(model, "input_shape", None) or input_shape
            out["l1_path"] = float(path_norm(folded, 1.0, shape)) ** 2
            out["l2_path"] = float(path_norm(folded, 2.0, shape)) ** 2
        except UnsupportedModuleError as exc:
            skip("path", exc)
    if "bounds" in groups and rows is not None:
        out.update(_bounds(out, rows, gamma, batches, m, delta, input_shape))

    bar_total = (sharpness_steps * sharpness_restarts if "sharpness" in groups else 0)
    bar = tqdm(total=bar_total, disable=not progress or bar_total == 0, desc="sharpness", leave=False)
    if "sharpness" in groups:
        obj = objective if sharpness_examples is None else DatasetObjective(
            model, _batches(batches, sharpness_examples), loss_fn, device)
        res = worst_case_sharpness(obj, params, alpha=sharpness_alpha, steps=sharpness_steps,
                                   restarts=sharpness_restarts, seed=seed, progress=bar)
        out["sharpness"] = res.sharpness
        out["sharpness_max_loss"] = res.max_loss
    bar.close()
    if "flatness" in groups:
        obj = objective if flatness_examples is None else DatasetObjective(
            model, _batches(batches, flatness_examples), loss_fn, device)
        for mode, prefix in (("isotropic", "pacbayes"), ("magnitude", "pacbayes_mag")):
            if progress:
                print(f"PAC-Bayes flatness ({mode}) ...", flush=True)
            s = search_sigma(obj, params, threshold=flatness_threshold, mode=mode, samples=flatness_samples,
                             seed=seed, eps=magnitude_eps, metric=flatness_metric)
            kl = kl_term(params, init_params, s.sigma, mode, magnitude_eps)
            out[f"{prefix}_sigma"] = s.sigma
            out[f"{prefix}_flatness"] = 1.0 / s.sigma ** 2
            out[f"{prefix}_kl"] = kl
            out[f"{prefix}_expected_error"] = s.expected_error
            out[f"{prefix}_bound"] = pac_bayes_bound(s.expected_error, kl, m, delta)
            out[f"{prefix}_evaluations"] = s.evaluations
            if s.saturated:
                warnings.append(f"{prefix}: sigma reached the search's upper end without the threshold being hit")
    if "two_layer" in groups:
        try:
            if init_model is None:
                raise MeasureError("needs init_model (unit-wise distances to initialization)")
            result = two_layer_measures(model, init_model.to(device), batches, margin_q=margin_quantile, delta=delta)
            out.update({k: v for k, v in result.items() if k not in ("margin", "num_params")})
            out.setdefault("margin", result["margin"])
        except MeasureError as exc:
            skip("two_layer", exc)
    if "hessian" in groups:
        out.update(hessian_measures(model, batches, loss_fn=loss_fn, max_examples=hessian_examples, seed=seed))
        if not out["hessian_converged"]:
            warnings.append("hessian: a Lanczos or Hutchinson estimate stopped before its tolerance")
    out["warnings"] = warnings
    out["settings"] = settings
    return out


def _bounds(out: dict[str, Any], rows: list[dict[str, float]], gamma: float, batches, m: int, delta: float,
            input_shape: Sequence[int]) -> dict[str, float]:
    res: dict[str, float] = {}
    log_g2 = 2 * math.log(gamma) if gamma > 0 else float("nan")

    def over_margin(name: str, log_value: float) -> None:
        value = log_value - log_g2
        res[f"log_{name}_over_margin"] = value
        res[f"{name}_over_margin"] = _exp(value) if not math.isnan(value) else float("nan")

    over_margin("frobenius", out["log_frobenius_product"])
    over_margin("spectral", out["log_spectral_product"])
    if "l1_path" in out:
        over_margin("l1_path", _log(out["l1_path"]))
        over_margin("l2_path", _log(out["l2_path"]))
    over_margin("spectral_complexity", out["log_spectral_complexity_unnormalized"])
    # Exploring Generalization's forms with their constants: l2: prod 4 ||W||_F^2; spectral: prod h_i ||W_i||_2^2
    over_margin("exploring_l2", out["log_frobenius_product"] + len(rows) * math.log(4))
    over_margin("exploring_spectral", out["log_spectral_product"] + sum(math.log(r["fan_out"]) for r in rows))
    x_norms = torch.cat([x.reshape(len(x), -1).double().norm(dim=1) for x, _ in batches])
    width = max([2, math.prod(input_shape)] + [r["fan_out"] for r in rows])
    d = len(rows)
    log_r = bartlett_log_r(rows)
    res["log_bartlett_bound"] = (math.log(float(x_norms.norm())) + log_r + math.log(math.log(width))
                                 - math.log(gamma) - math.log(m)) if gamma > 0 else float("nan")
    res["bartlett_bound"] = _exp(res["log_bartlett_bound"]) if gamma > 0 else float("nan")
    b = float(x_norms.max())
    log_main = (2 * math.log(b) + 2 * math.log(d) + math.log(width) + math.log(math.log(d * width))
                + out["log_spectral_complexity_unnormalized"])
    if gamma > 0:
        main = _exp(log_main)
        res["pac_bayes_spectral_bound"] = math.sqrt((main + math.log(d * m / delta)) / (gamma ** 2 * m))
        res["log_pac_bayes_spectral_bound"] = (0.5 * (math.log(main + math.log(d * m / delta)) - log_g2 - math.log(m))
                                               if math.isfinite(main) else 0.5 * (log_main - log_g2 - math.log(m)))
    else:
        res["pac_bayes_spectral_bound"] = res["log_pac_bayes_spectral_bound"] = float("nan")
    return res
