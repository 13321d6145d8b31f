r"""``geomopt.measures.compute``: every generalization measure of a trained classifier, in one dict.

Groups (``measures='all'`` or a list of group names), each one function of the registry :data:`MEASURES`
(group name -> function, its docstring the formula); :data:`STEPS` runs them in a fixed order with the steps
whose numbers several groups share (the margin, the training loss, the distance to init, the BatchNorm fold):

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
from dataclasses import dataclass, field
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


@dataclass
class _Run:
    """What the measure groups of one :func:`compute` call share: the model and its training batches, the
    options, the numbers computed so far (``out``, in the order they are computed) and the ingredients that
    several groups use (the margin ``gamma``, the BatchNorm-folded networks, the per-layer norms ``rows``)."""

    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    init_model: nn.Module | None
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    device: str | torch.device
    input_shape: tuple[int, ...]
    options: dict[str, Any]
    explicit: bool
    out: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    init_params: dict[str, Tensor] | None = None
    gamma: float = float("nan")
    folded: nn.Module | None = None
    folded_init: nn.Module | None = None
    rows: list[dict[str, float]] | None = None
    m: int = field(init=False)  # the number of training examples
    x0: Tensor = field(init=False)  # the first batch's inputs (the layers' shapes are traced on it)
    objective: DatasetObjective = field(init=False)  # the training loss as a function of the parameters
    params: dict[str, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.m = sum(len(y) for _, y in self.batches)
        self.x0 = self.batches[0][0].to(self.device)
        self.objective = DatasetObjective(self.model, self.batches, self.loss_fn, self.device)
        self.params = self.objective.params()

    def skip(self, group: str, exc: Exception) -> None:
        """A group that does not apply: an error when it was asked for by name, else a warning."""
        if self.explicit:
            raise MeasureError(f"measure group '{group}': {exc}") from exc
        self.warnings.append(f"{group}: skipped: {exc}")

    def subset(self, examples: int | None) -> DatasetObjective:
        """The training objective on the first ``examples`` examples (all: None)."""
        return self.objective if examples is None else DatasetObjective(
            self.model, _batches(self.batches, examples), self.loss_fn, self.device)


def _margin(run: _Run) -> None:
    """``margin`` = gamma, the ``margin_quantile`` quantile of the signed training margins
    ``f(x)_y - max_{j != y} f(x)_j``; also ``margin_min``, ``margin_median``. A gamma <= 0 is warned about
    (the margin-normalized measures are then NaN)."""
    q = run.options["margin_quantile"]
    ms = margins(run.model, run.batches, run.device)
    run.gamma = quantile(ms, q)
    run.out.update(margin=run.gamma, margin_min=float(ms.min()), margin_median=float(ms.median()))
    if run.gamma <= 0:
        run.warnings.append(f"the {q:g}-quantile training margin is {run.gamma:.4g} <= 0 (more than a "
                            f"{q:g} fraction of training points misclassified or on the boundary): "
                            "margin-normalized measures are NaN")


def _training_loss(run: _Run) -> None:
    """``train_loss`` = (1/m) sum_i loss(f(x_i), y_i) and ``train_error``, the fraction misclassified."""
    run.out["train_loss"], run.out["train_error"], _ = run.objective(run.params)


def _distance_to_init(run: _Run) -> None:
    """``dist_init`` = ||w - w0||_2 over all parameters (with ``init_model``, which must have the model's
    parameter names and shapes)."""
    if run.init_model is None:
        return
    params = run.params
    run.init_params = init = {k: v.detach().to(run.device) for k, v in run.init_model.named_parameters()}
    if set(init) != set(params) or any(init[k].shape != params[k].shape for k in params):
        raise ValueError("init_model does not have the same parameters (names and shapes) as model")
    run.out["dist_init"] = math.sqrt(sum(float(((params[k] - init[k]).double() ** 2).sum()) for k in params))


def _fold(run: _Run) -> None:
    """BatchNorm (eval) folded into the preceding layer, of the model and of ``init_model``: the norm and path
    measures need a positively homogeneous network."""
    try:
        run.folded = fold_batchnorm(run.model) if has_batchnorm(run.model) else run.model
        if run.init_model is not None:
            init = run.init_model
            run.folded_init = fold_batchnorm(init.to(run.device)) if has_batchnorm(init) else init
    except MeasureError as exc:
        run.skip("norms", exc)


def _norms(run: _Run) -> None:
    """Per-layer Frobenius and exact spectral norms ``||W_i||_F``, ``||W_i||_2`` and distances to init; their
    products ``prod_i ||W_i||`` (and logs), sums, the spectral complexity
    ``prod_i ||W_i||_2 (sum_i ||W_i - M_i||_{2,1}^{2/3} / ||W_i||_2^{2/3})^{3/2}`` (Bartlett et al. 2017)
    (:func:`~geomopt.measures.norms.norm_measures`); per-layer numbers in ``layers``."""
    if run.folded is None:
        return
    layers = weighted_layers(run.folded, run.x0)
    init_layers = weighted_layers(run.folded_init, run.x0) if run.folded_init is not None else None
    run.rows = layer_norms(layers, init_layers, run.options["spectral_method"])
    run.out.update(norm_measures(run.rows))
    run.out["layers"] = run.rows


def _path(run: _Run) -> None:
    """``l1_path`` = (sum_paths prod_e |w_e|)^2 and ``l2_path`` = sum_paths prod_e w_e^2 of the folded network
    (:func:`geomopt.geometry.path_norm`; biases are edges, max-pool counts every path)."""
    if run.folded is None:
        return
    try:
        shape = getattr(run.model, "input_shape", None) or run.input_shape
        run.out["l1_path"] = float(path_norm(run.folded, 1.0, shape)) ** 2
        run.out["l2_path"] = float(path_norm(run.folded, 2.0, shape)) ** 2
    except UnsupportedModuleError as exc:
        run.skip("path", exc)


def _bounds(run: _Run) -> None:
    """Margin-normalized measures ``measure / gamma^2`` (and logs; the path norms' only when ``path`` is asked
    for too), the Bartlett et al. (2017) bound
    ``||X||_F R log(W) / (gamma m)`` and the PAC-Bayes spectral bound of Neyshabur et al. (2018)
    ``sqrt((B^2 d^2 h log(d h) R^2 + log(d m / delta)) / (gamma^2 m))`` (:func:`_bound_values`)."""
    if run.rows is not None:
        run.out.update(_bound_values(run.out, run.rows, run.gamma, run.batches, run.m, run.options["delta"],
                                     run.input_shape))


def _sharpness(run: _Run) -> None:
    """``sharpness`` = max over ``|nu| <= alpha (|w| + 1)`` of L(w + nu) - L(w) by projected ascent (restarts),
    and ``sharpness_max_loss`` = L(w + nu*) (:func:`~geomopt.measures.sharpness.worst_case_sharpness`)."""
    o = run.options
    bar = tqdm(total=o["sharpness_steps"] * o["sharpness_restarts"], disable=not o["progress"], desc="sharpness",
               leave=False)
    res = worst_case_sharpness(run.subset(o["sharpness_examples"]), run.params, alpha=o["sharpness_alpha"],
                               steps=o["sharpness_steps"], restarts=o["sharpness_restarts"], seed=o["seed"],
                               progress=bar)
    bar.close()
    run.out["sharpness"] = res.sharpness
    run.out["sharpness_max_loss"] = res.max_loss


def _flatness(run: _Run) -> None:
    """PAC-Bayes flatness, isotropic (``pacbayes_*``, nu ~ N(0, sigma^2 I)) and magnitude-aware
    (``pacbayes_mag_*``, sigma_i = sigma (|w_i| + eps)): the largest sigma whose expected loss increase stays
    under the threshold, ``1 / sigma^2``, the KL term, the expected error, the bound
    ``E[err] + sqrt((KL + log(m / delta)) / (2 (m - 1)))`` and the loss evaluations spent."""
    o = run.options
    obj = run.subset(o["flatness_examples"])
    for mode, prefix in (("isotropic", "pacbayes"), ("magnitude", "pacbayes_mag")):
        if o["progress"]:
            print(f"PAC-Bayes flatness ({mode}) ...", flush=True)
        s = search_sigma(obj, run.params, threshold=o["flatness_threshold"], mode=mode, samples=o["flatness_samples"],
                         seed=o["seed"], eps=o["magnitude_eps"], metric=o["flatness_metric"])
        kl = kl_term(run.params, run.init_params, s.sigma, mode, o["magnitude_eps"])
        run.out[f"{prefix}_sigma"] = s.sigma
        run.out[f"{prefix}_flatness"] = 1.0 / s.sigma ** 2
        run.out[f"{prefix}_kl"] = kl
        run.out[f"{prefix}_expected_error"] = s.expected_error
        run.out[f"{prefix}_bound"] = pac_bayes_bound(s.expected_error, kl, run.m, o["delta"])
        run.out[f"{prefix}_evaluations"] = s.evaluations
        if s.saturated:
            run.warnings.append(f"{prefix}: sigma reached the search's upper end without the threshold being hit")


def _two_layer(run: _Run) -> None:
    """For a two-layer ReLU net ``V relu(U x)``: the capacity bound of Neyshabur et al. (2019), of order
    ``||V||_F (||U - U0||_F + ||U0||_2) / (gamma sqrt(m))`` up to logs, its unit-wise ingredients and the
    capacity terms it is compared with (:func:`~geomopt.measures.two_layer.two_layer_measures`; needs
    ``init_model``)."""
    try:
        if run.init_model is None:
            raise MeasureError("needs init_model (unit-wise distances to initialization)")
        result = two_layer_measures(run.model, run.init_model.to(run.device), run.batches,
                                    margin_q=run.options["margin_quantile"], delta=run.options["delta"])
        run.out.update({k: v for k, v in result.items() if k not in ("margin", "num_params")})
        run.out.setdefault("margin", result["margin"])
    except MeasureError as exc:
        run.skip("two_layer", exc)


def _hessian(run: _Run) -> None:
    """``hessian_top_eigenvalue`` lambda_max(H) (Lanczos) and ``hessian_trace`` tr(H) (Hutch++) of the training
    loss's Hessian, and their magnitude-normalized forms (:func:`~geomopt.measures.hessian.hessian_measures`)."""
    run.out.update(hessian_measures(run.model, run.batches, loss_fn=run.loss_fn,
                                    max_examples=run.options["hessian_examples"], seed=run.options["seed"]))
    if not run.out["hessian_converged"]:
        run.warnings.append("hessian: a Lanczos or Hutchinson estimate stopped before its tolerance")


@dataclass(frozen=True)
class MeasureStep:
    """One step of :func:`compute`: ``fn`` adds its numbers to the run, and runs when any group in ``for_groups``
    was asked for (the group itself and the groups that use its numbers)."""

    fn: Callable[[_Run], None]
    for_groups: frozenset[str]


def _step(fn: Callable[[_Run], None], *groups: str) -> MeasureStep:
    return MeasureStep(fn, frozenset(groups))


#: Every step of :func:`compute` in the order it runs (the order of the result's keys). The steps named by a
#: group are :data:`MEASURES`; the others compute ingredients several groups share.
STEPS: dict[str, MeasureStep] = {
    "margin": _step(_margin, "margin", "bounds"),
    "training_loss": _step(_training_loss, "margin", "sharpness", "flatness"),
    "dist_init": _step(_distance_to_init, *GROUPS),
    "fold": _step(_fold, "norms", "path", "bounds"),
    "norms": _step(_norms, "norms", "bounds"),
    "path": _step(_path, "path"),
    "bounds": _step(_bounds, "bounds"),
    "sharpness": _step(_sharpness, "sharpness"),
    "flatness": _step(_flatness, "flatness"),
    "two_layer": _step(_two_layer, "two_layer"),
    "hessian": _step(_hessian, "hessian"),
}
#: The registry of measure groups: group name -> the function that computes it (its docstring states the formula).
MEASURES: dict[str, Callable[[_Run], None]] = {name: STEPS[name].fn for name in GROUPS}


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

    Each group is one function of the registry :data:`MEASURES`; :data:`STEPS` runs them (and the ingredients
    they share) in a fixed order.

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
    options = dict(margin_quantile=margin_quantile, sharpness_alpha=sharpness_alpha, sharpness_steps=sharpness_steps,
                   sharpness_restarts=sharpness_restarts, sharpness_examples=sharpness_examples,
                   flatness_threshold=flatness_threshold, flatness_samples=flatness_samples,
                   flatness_examples=flatness_examples, magnitude_eps=magnitude_eps, delta=delta,
                   hessian_examples=hessian_examples, seed=seed)
    _check_options(**options)
    if flatness_metric not in ("loss", "error"):
        raise ValueError(f"measures: flatness_metric must be 'loss' or 'error', got {flatness_metric!r}")
    check_finite_parameters(model, "generalization measures")
    if init_model is not None:
        check_finite_parameters(init_model, "generalization measures (init_model)")
    model = model.to(device)
    batches = _batches(train_loader, None)
    shape = tuple(input_shape) if input_shape is not None else tuple(batches[0][0].shape[1:])
    run = _Run(model, batches, init_model, loss_fn, device, shape, explicit=explicit,
               options={**options, "flatness_metric": flatness_metric, "spectral_method": spectral_method,
                        "progress": progress})
    run.out.update(num_examples=run.m, num_params=sum(p.numel() for p in model.parameters()))
    for step in STEPS.values():
        if step.for_groups.intersection(groups):
            step.fn(run)
    run.out["warnings"] = run.warnings
    run.out["settings"] = {"margin_quantile": margin_quantile, "sharpness_alpha": sharpness_alpha,
                           "sharpness_steps": sharpness_steps, "sharpness_restarts": sharpness_restarts,
                           "flatness_threshold": flatness_threshold, "flatness_samples": flatness_samples,
                           "flatness_metric": flatness_metric, "magnitude_eps": magnitude_eps, "delta": delta,
                           "seed": seed, "hessian_examples": hessian_examples, "measures": groups}
    return run.out


def _bound_values(out: dict[str, Any], rows: list[dict[str, float]], gamma: float, batches, m: int, delta: float,
                  input_shape: Sequence[int]) -> dict[str, float]:
    """The numbers of the ``bounds`` group from the norm measures in ``out``, the per-layer ``rows``, the margin
    ``gamma`` and the data (``R`` = :func:`~geomopt.measures.norms.bartlett_log_r`, width W, depth d, ``m``
    examples, ``||X||_F`` and ``B = max ||x||``)."""
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
