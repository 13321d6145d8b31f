r"""Worst-case sharpness and PAC-Bayes flatness.

Keskar et al. (2017) and Neyshabur et al., "Exploring Generalization in Deep Learning" (2017);
Jiang et al., "Fantastic Generalization Measures and Where to Find Them" (2019); Dziugaite et al.
(2020).

**Worst-case sharpness** at ``alpha``::

    zeta_alpha(w) = max_{|nu_i| <= alpha (|w_i| + 1)} [L(w + nu) - L(w)] / (1 + L(w))

found by projected (sign-)gradient ASCENT on ``L(w + nu)`` in the box, from ``nu = 0`` and from
``restarts - 1`` uniform random points of the box; every iterate's loss is kept and the largest
is returned. ``nu = 0`` is a candidate, so the result is never negative.

**PAC-Bayes flatness**: the largest ``sigma`` with ``E_u[L(w + u)] - L(w) <= threshold``, where
``u_i ~ N(0, s_i^2)`` with standard deviation ``s_i = sigma`` (isotropic) or ``s_i = sigma |w_i| + eps``
(magnitude-aware). ``sigma`` is a STANDARD DEVIATION: the noise is ``s_i * z`` with ``z ~ N(0, 1)``
(passing ``sigma**2`` to a sampler that expects a standard deviation is a public-code pitfall).

The expectation is a Monte-Carlo mean over ``samples`` draws. Search: the draws ``z_k`` are FIXED
(common random numbers), which makes the estimate ``f(sigma)`` a deterministic, continuous function
of sigma; near a minimum ``f`` grows like ``sigma^2``, so the root is found by false position
(Illinois variant) in ``s = sigma^2``, starting from the known point ``f(0) = -threshold`` (no loss
evaluation). The search stops when the bracket on sigma is narrower than ``xtol`` (default
``2 / 2^15``: the precision of the 15-step bisection on ``[0, 2]`` of Dziugaite et al.) and returns
the lower end, a sigma whose estimated increase is under the threshold.

KL term (prior ``N(w0, diag s^2)``, posterior ``N(w, diag s^2)``, ``w0`` the initialization or 0):
``KL = sum_i (w_i - w0_i)^2 / (2 s_i^2)``; bound (Neyshabur et al. 2017, eq. 7):
``E_u err(w + u) <= E_u err_hat(w + u) + 4 sqrt((KL + ln(2 m / delta)) / m)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from geomopt.checks import WrongTypeError, check_int, check_number, check_tensor

Params = dict[str, Tensor]


class DatasetObjective:
    """Mean loss (and error) of ``model`` over fixed batches, as a function of its parameters.

    The model is evaluated in eval mode (dropout off, BatchNorm running statistics) with
    ``torch.func.functional_call``; its own parameters are never modified.
    """

    def __init__(self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                 device: str | torch.device = "cpu"):
        self.model, self.loss_fn = model, loss_fn
        self.batches = [(x.to(device), y.to(device)) for x, y in batches]
        self.count = sum(len(y) for _, y in self.batches)
        if self.count == 0:
            raise ValueError("DatasetObjective: the loader yielded no examples")
        self.evaluations = 0  # full passes over the data

    def params(self) -> Params:
        return {k: v.detach() for k, v in self.model.named_parameters()}

    def __call__(self, params: Params, with_grad: bool = False) -> tuple[float, float, Params | None]:
        """(mean loss, mean error, gradient of the mean loss or None)."""
        was_training = self.model.training
        self.model.eval()
        self.evaluations += 1
        total, wrong = 0.0, 0.0
        grads = {k: torch.zeros_like(v) for k, v in params.items()} if with_grad else None
        try:
            for x, y in self.batches:
                p = {k: v.detach().requires_grad_(with_grad) for k, v in params.items()}
                with torch.set_grad_enabled(with_grad):
                    out = functional_call(self.model, p, (x,))
                    loss = self.loss_fn(out, y)
                w = len(y) / self.count
                if with_grad:
                    gs = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
                    for (k, _), g in zip(p.items(), gs):
                        if g is not None:
                            grads[k].add_(g, alpha=w)
                total += float(loss.detach()) * w
                if out.dim() == 2 and not y.dtype.is_floating_point:
                    wrong += float((out.argmax(1) != y).sum())
        finally:
            self.model.train(was_training)
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss is {total} at the evaluated parameters")
        return total, wrong / self.count, grads


def function_objective(f: Callable[[Params], Tensor]) -> Callable[..., tuple[float, float, Params | None]]:
    """Wrap a differentiable ``f(params) -> scalar`` into the objective interface (error reported as NaN)."""

    def objective(params: Params, with_grad: bool = False):
        p = {k: v.detach().requires_grad_(with_grad) for k, v in params.items()}
        with torch.set_grad_enabled(with_grad):
            val = f(p)
        grads = None
        if with_grad:
            gs = torch.autograd.grad(val, list(p.values()), allow_unused=True)
            grads = {k: (g if g is not None else torch.zeros_like(p[k])) for k, g in zip(p, gs)}
        objective.evaluations += 1
        return float(val.detach()), float("nan"), grads

    objective.evaluations = 0
    return objective


@dataclass
class SharpnessResult:
    sharpness: float        # max [L(w+nu) - L(w)] / (1 + L(w)), >= 0
    base_loss: float
    max_loss: float
    nu: Params              # the maximizing perturbation
    history: list[float] = field(default_factory=list)  # best loss after each restart


def worst_case_sharpness(objective, params: Params, *, alpha: float = 5e-4, steps: int = 20, restarts: int = 3,
                         step_size: float = 0.25, seed: int = 0, progress=None) -> SharpnessResult:
    """Projected sign-gradient ascent of ``L(w + nu)`` over the box ``|nu| <= alpha (|w| + 1)``.

    Args:
        objective: ``objective(params, with_grad) -> (loss, error, grads)``, e.g. :class:`DatasetObjective`.
        params: the point ``w`` (name -> tensor).
        alpha: relative box size (5e-4 in Keskar et al. / Neyshabur et al. 2017).
        steps: ascent steps per restart; each step moves ``step_size * box`` along ``sign(grad)``
            and clamps to the box.
        restarts: the first start is ``nu = 0``, the others uniform in the box.
        seed: seed of the random starts.

    Returns:
        :class:`SharpnessResult`; ``sharpness >= 0`` always.
    """
    where = "worst_case_sharpness"
    _check_params(where, params)
    check_number(where, "alpha", alpha, low=0, low_open=True)
    check_int(where, "steps", steps, low=1)
    check_int(where, "restarts", restarts, low=1)
    check_number(where, "step_size", step_size, low=0, low_open=True)
    check_int(where, "seed", seed)
    g = torch.Generator().manual_seed(seed)
    box = {k: alpha * (w.abs() + 1) for k, w in params.items()}
    base, _, _ = objective(params)
    best, best_nu, history = base, {k: torch.zeros_like(w) for k, w in params.items()}, []
    for r in range(restarts):
        if r == 0:
            nu = {k: torch.zeros_like(w) for k, w in params.items()}
        else:
            nu = {k: (torch.rand(w.shape, generator=g, dtype=w.dtype).to(w.device) * 2 - 1) * box[k]
                  for k, w in params.items()}
        for t in range(steps + 1):
            loss, _, grads = objective({k: params[k] + nu[k] for k in params}, with_grad=t < steps)
            if loss > best:
                best, best_nu = loss, {k: v.clone() for k, v in nu.items()}
            if t == steps:
                break
            for k in nu:  # ASCENT: move along +sign(grad), then project on the box
                nu[k] = torch.maximum(torch.minimum(nu[k] + step_size * box[k] * torch.sign(grads[k]), box[k]), -box[k])
            if progress is not None:
                progress.update(1)
        history.append(best)
    return SharpnessResult((best - base) / (1 + base), base, best, best_nu, history)


def _check_params(where: str, params: Params, key: str = "params") -> None:
    """A non-empty ``{name: tensor}`` of finite tensors."""
    if not isinstance(params, dict) or not params:
        raise WrongTypeError(f"{where}: {key} must be a non-empty dict of name -> tensor, got {type(params).__name__}")
    for name, w in params.items():
        check_tensor(where, f"{key}[{name!r}]", w, nonempty=False)


def perturbation_std(params: Params, sigma: float, mode: str, eps: float = 1e-3) -> Params:
    """Per-parameter standard deviation: ``sigma`` (isotropic) or ``sigma |w| + eps`` (magnitude-aware)."""
    _check_params("perturbation_std", params)
    check_number("perturbation_std", "sigma", sigma, low=0)
    check_number("perturbation_std", "eps", eps, low=0)
    if mode == "isotropic":
        return {k: torch.full_like(w, sigma) for k, w in params.items()}
    if mode == "magnitude":
        return {k: sigma * w.abs() + eps for k, w in params.items()}
    raise ValueError(f"perturbation mode must be 'isotropic' or 'magnitude', got {mode!r}")


def standard_normal(params: Params, seed: int) -> Params:
    """A fixed draw ``z ~ N(0, I)`` shaped like ``params`` (regenerated from ``seed``)."""
    g = torch.Generator().manual_seed(check_int("standard_normal", "seed", seed))
    return {k: torch.randn(w.shape, generator=g, dtype=w.dtype).to(w.device) for k, w in params.items()}


def sample_perturbation(params: Params, sigma: float, mode: str, seed: int, eps: float = 1e-3) -> Params:
    """``u = s * z`` with ``s`` the standard deviation of :func:`perturbation_std` and ``z ~ N(0, I)``."""
    check_int("sample_perturbation", "seed", seed)
    std = perturbation_std(params, sigma, mode, eps)
    z = standard_normal(params, seed)
    return {k: std[k] * z[k] for k in params}


def kl_term(params: Params, prior_mean: Params | None, sigma: float, mode: str, eps: float = 1e-3) -> float:
    """``KL(N(w, diag s^2) || N(w0, diag s^2)) = sum (w - w0)^2 / (2 s^2)``; ``s > 0`` everywhere: ``sigma > 0``
    (and ``eps > 0`` for ``mode='magnitude'``)."""
    check_number("kl_term", "sigma", sigma, low=0, low_open=True)
    if prior_mean is not None:
        _check_params("kl_term", prior_mean, "prior_mean")
        missing = sorted(set(params) - set(prior_mean))
        if missing:
            raise ValueError(f"kl_term: prior_mean has no entry for {missing}")
    std = perturbation_std(params, sigma, mode, eps)
    total = 0.0
    for k, w in params.items():
        d = w - (prior_mean[k].to(w) if prior_mean is not None else 0)
        total += float((d.double() ** 2 / (2 * std[k].double() ** 2)).sum())
    return total


def pac_bayes_bound(expected_error: float, kl: float, m: int, delta: float = 0.05) -> float:
    """``E err_hat + 4 sqrt((KL + ln(2m/delta)) / m)`` (Neyshabur et al. 2017, eq. 7)."""
    check_number("pac_bayes_bound", "expected_error", expected_error, low=0, high=1)
    check_number("pac_bayes_bound", "kl", kl, low=0)
    check_int("pac_bayes_bound", "m", m, low=1)
    check_number("pac_bayes_bound", "delta", delta, low=0, high=1, low_open=True, high_open=True)
    return expected_error + 4 * math.sqrt((kl + math.log(2 * m / delta)) / m)


@dataclass
class SigmaSearch:
    sigma: float                 # largest sigma found under the threshold
    increase: float              # its estimated expected increase
    expected_error: float        # E_u err_hat(w + u) at sigma (NaN for function objectives)
    evaluations: int             # loss evaluations (full passes) spent, samples included
    saturated: bool              # sigma_max itself stayed under the threshold
    trace: list[tuple[float, float]] = field(default_factory=list)  # (sigma, increase) evaluated


def _expected(objective, params: Params, sigma: float, mode: str, samples: int, seed: int, eps: float,
              metric: str, base: tuple[float, float]) -> tuple[float, float]:
    """(MC mean increase of the metric, MC mean error) at ``sigma`` with draws seeded seed..seed+samples-1."""
    inc, err = 0.0, 0.0
    std = perturbation_std(params, sigma, mode, eps)
    for k in range(samples):
        z = standard_normal(params, seed + k)
        loss, error, _ = objective({n: params[n] + std[n] * z[n] for n in params})
        inc += (loss - base[0]) if metric == "loss" else (error - base[1])
        err += error
    return inc / samples, err / samples


def _check_search(where: str, params: Params, threshold: float, samples: int, seed: int, metric: str) -> None:
    _check_params(where, params)
    check_number(where, "threshold", threshold, low=0, low_open=True)
    check_int(where, "samples", samples, low=1)
    check_int(where, "seed", seed)
    if metric not in ("loss", "error"):
        raise ValueError(f"{where}: flatness metric must be 'loss' or 'error', got {metric!r}")


def search_sigma(objective, params: Params, *, threshold: float = 0.1, mode: str = "isotropic",
                 samples: int = 10, seed: int = 0, eps: float = 1e-3, metric: str = "loss",
                 sigma_init: float = 0.05, sigma_max: float = 10.0, xtol: float = 2.0 / 2 ** 15,
                 max_evals: int = 40) -> SigmaSearch:
    """Largest sigma whose Monte-Carlo expected increase of ``metric`` stays under ``threshold``.

    Common random numbers + Illinois false position in ``sigma^2`` (see the module docstring).

    Args:
        objective: ``objective(params, with_grad) -> (loss, error, grads)``.
        params: the trained weights ``w``.
        threshold: largest allowed expected increase (of the loss, or of the error if
            ``metric='error'``; Dziugaite et al. use an accuracy drop of 0.1).
        mode: ``"isotropic"`` (std ``sigma``) or ``"magnitude"`` (std ``sigma |w| + eps``).
        samples: Monte-Carlo draws per sigma (fixed across sigmas).
        sigma_init: first sigma tried; sigma_max: upper end of the search.
        xtol: final width of the bracket on sigma.
        max_evals: most sigma values evaluated (each costs ``samples`` passes).
    """
    _check_search("search_sigma", params, threshold, samples, seed, metric)
    check_number("search_sigma", "xtol", xtol, low=0, low_open=True)
    check_number("search_sigma", "sigma_init", sigma_init, low=0, low_open=True)
    check_number("search_sigma", "sigma_max", sigma_max, low=sigma_init)
    check_int("search_sigma", "max_evals", max_evals, low=1)
    loss0, err0, _ = objective(params)
    base = (loss0, err0)
    trace: list[tuple[float, float]] = []
    cache: dict[float, tuple[float, float]] = {}

    def f(sigma: float) -> float:
        inc, err = _expected(objective, params, sigma, mode, samples, seed, eps, metric, base)
        cache[sigma] = (inc, err)
        trace.append((sigma, inc))
        return inc - threshold

    # bracket [a, b] in sigma with f(a) <= 0 < f(b); f(0) = -threshold is known
    a, fa = 0.0, -threshold
    b, fb = sigma_init, f(sigma_init)
    while fb <= 0:
        a, fa = b, fb
        if a >= sigma_max:
            inc, err = cache[a]
            return SigmaSearch(a, inc, err, (len(trace)) * samples + 1, True, trace)
        # false-position guess in s = sigma^2 from (0, -thr) and (a, fa), at least doubling
        guess = math.sqrt(a * a * threshold / max(fa + threshold, 1e-12)) if fa + threshold > 0 else 4 * a
        b = min(sigma_max, max(2 * a, 1.2 * guess))
        fb = f(b)
    side = 0
    while b - a > xtol and len(trace) < max_evals:
        sa, sb = a * a, b * b
        s = sb - fb * (sb - sa) / (fb - fa)  # false position in s
        c = math.sqrt(min(max(s, sa), sb))
        # keep the step at least xtol/2 inside the bracket so that both ends move
        c = min(max(c, a + xtol / 2), b - xtol / 2)
        fc = f(c)
        if fc <= 0:
            a, fa = c, fc
            if side == -1:
                fb /= 2  # Illinois: the b end was kept twice in a row
            side = -1
        else:
            b, fb = c, fc
            if side == 1:
                fa /= 2
            side = 1
    if a == 0.0:
        raise RuntimeError("sigma search: no sigma > 0 with the increase under the threshold was found within "
                           f"max_evals={max_evals}; raise the threshold or max_evals")
    inc, err = cache[a]
    return SigmaSearch(a, inc, err, len(trace) * samples + 1, False, trace)


def bisection_sigma(objective, params: Params, *, threshold: float = 0.1, mode: str = "isotropic",
                    samples: int = 10, seed: int = 0, eps: float = 1e-3, metric: str = "loss",
                    lo: float = 0.0, hi: float = 2.0, steps: int = 15, common_noise: bool = False) -> SigmaSearch:
    """The reference protocol (Dziugaite et al. 2020): ``steps`` bisection steps on ``[lo, hi]``,
    ``samples`` fresh Monte-Carlo draws per step (or the same draws if ``common_noise``)."""
    _check_search("bisection_sigma", params, threshold, samples, seed, metric)
    check_number("bisection_sigma", "lo", lo, low=0)
    check_number("bisection_sigma", "hi", hi, low=lo, low_open=True)
    check_int("bisection_sigma", "steps", steps, low=1)
    loss0, err0, _ = objective(params)
    trace = []
    inc_lo, err_lo = 0.0, float("nan")
    for step in range(steps):
        mid = (lo + hi) / 2
        draw_seed = seed if common_noise else seed + 1000003 * (step + 1)
        inc, err = _expected(objective, params, mid, mode, samples, draw_seed, eps, metric, (loss0, err0))
        trace.append((mid, inc))
        if inc <= threshold:
            lo, inc_lo, err_lo = mid, inc, err
        else:
            hi = mid
    return SigmaSearch(lo, inc_lo, err_lo, steps * samples + 1, False, trace)
