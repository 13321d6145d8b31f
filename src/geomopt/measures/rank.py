r"""Rank correlation of a measure with the generalization gap (Jiang et al. 2020, "Fantastic
Generalization Measures and Where to Find Them", section 4, eq. 3-4).

- Kendall's tau, variant ``"a"`` (the default, Jiang et al.'s eq. 3):
  ``tau = (C - D) / n0``, ``n0 = n(n-1)/2`` pairs, ``C``/``D`` concordant/discordant pairs; a pair tied
  in either sequence counts 0 (so ties pull tau towards 0 and a constant sequence gives 0).
- Variant ``"b"`` (``scipy.stats.kendalltau``'s default): ``tau = (C - D) / sqrt((n0 - n1) (n0 - n2))``,
  ``n1``/``n2`` pairs tied in x / in y; NaN when either sequence is constant.
- Granulated Kendall coefficient (eq. 4): for each hyperparameter ``i``, the models are grouped by the
  values of all the OTHER hyperparameters; ``m_i`` is the mean over ALL groups in which hyperparameter
  ``i`` takes at least two values of the tau within the group; ``Psi = mean_i m_i``. With variant ``"b"``
  a group whose tau is NaN (constant gap or measure) is dropped from the mean instead.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch

from geomopt.checks import check_int, check_number

VARIANTS = ("a", "b")


def _variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"Kendall tau variant must be one of {VARIANTS} (a: Jiang et al.'s eq. 3, b: scipy's "
                         f"tie-corrected default), got {variant!r}")
    return variant


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: str = "a") -> float:
    """Kendall's tau-a (default) or tau-b of two equal-length sequences; NaN when n < 2 (and for tau-b when
    either sequence is constant)."""
    _variant(variant)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: x and y differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2:
        return float("nan")
    a = torch.as_tensor(list(x), dtype=torch.float64)
    b = torch.as_tensor(list(y), dtype=torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("kendall_tau: non-finite values (drop NaN/inf measures before correlating)")
    i, j = torch.triu_indices(len(a), len(a), offset=1)
    sx, sy = torch.sign(a[i] - a[j]), torch.sign(b[i] - b[j])
    s = float((sx * sy).sum())
    n0 = len(i)
    if variant == "a":
        return s / n0
    n1, n2 = float((sx == 0).sum()), float((sy == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denom if denom > 0 else float("nan")


def granulated_kendall(hparams: Sequence[Mapping[str, Hashable]], measure: Sequence[float],
                       gap: Sequence[float], variant: str = "a") -> dict[str, float]:
    """Per-hyperparameter ``m_i`` and their mean ``psi`` (Jiang et al. eq. 4).

    Args:
        hparams: one dict per model, the hyperparameter values that define it (same keys for all).
        measure, gap: the measure and the generalization gap of each model.
        variant: ``"a"`` (Jiang et al.: tau-a, every group counts) or ``"b"`` (tau-b, NaN groups dropped).

    Returns:
        ``{hparam: m_i, ..., "psi": mean}``; a hyperparameter with no group in which it takes >= 2 values
        (an incomplete grid) gets NaN and is left out of ``psi``.
    """
    _variant(variant)
    if not (len(hparams) == len(measure) == len(gap)):
        raise ValueError("granulated_kendall: hparams, measure and gap must have one entry per model")
    if not hparams:
        raise ValueError("granulated_kendall: no models")
    keys = sorted(hparams[0])
    if any(sorted(h) != keys for h in hparams):
        raise ValueError("granulated_kendall: every model must list the same hyperparameters")
    out: dict[str, float] = {}
    for key in keys:
        groups: dict[tuple, list[int]] = {}
        for n, h in enumerate(hparams):
            groups.setdefault(tuple((k, h[k]) for k in keys if k != key), []).append(n)
        taus = []
        for idx in groups.values():
            if len({hparams[n][key] for n in idx}) < 2:
                continue
            t = kendall_tau([measure[n] for n in idx], [gap[n] for n in idx], variant)
            if not math.isnan(t):
                taus.append(t)
        out[key] = sum(taus) / len(taus) if taus else float("nan")
    valid = [v for v in out.values() if not math.isnan(v)]
    out["psi"] = sum(valid) / len(valid) if valid else float("nan")
    return out


def bootstrap_kendall_draws(x: Sequence[float], y: Sequence[float], variant: str = "a", *, samples: int = 1000,
                            seed: int = 0) -> list[float]:
    r"""Kendall's tau (variant ``"a"`` or ``"b"``) of ``samples`` bootstrap resamples of the models (drawn
    with replacement), for percentile intervals or hierarchical intervals over several zoos.

    A resample with counts ``w`` (``sum w = n``) has, over its ``n0 = n(n-1)/2`` position pairs,
    ``C - D = 1/2 w^T (S_x * S_y) w``, ``S_x = sign(x_i - x_j)`` (copies of one model tie, counting 0);
    tau-a is ``(C - D) / n0``; tau-b divides by ``sqrt((n0 - n1)(n0 - n2))`` with
    ``n1 = 1/2 w^T [S_x = 0]_{i != j} w + sum_i w_i (w_i - 1) / 2`` pairs tied in x (and ``n2`` in y),
    and drops resamples where x or y is constant. All resamples in one batch of products. Seeded: the
    same call gives the same draws. Empty when ``n < 2`` or ``samples == 0``.
    """
    _variant(variant)
    check_int("bootstrap_kendall", "samples", samples, low=0)  # 0: no draws
    check_int("bootstrap_kendall", "seed", seed)
    n = len(x)
    if len(y) != n:
        raise ValueError(f"bootstrap_kendall: x and y differ in length ({n} vs {len(y)})")
    if n < 2 or samples < 1:
        return []
    a = torch.as_tensor(list(x), dtype=torch.float64)
    b = torch.as_tensor(list(y), dtype=torch.float64)
    sx, sy = torch.sign(a[:, None] - a[None, :]), torch.sign(b[:, None] - b[None, :])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (samples, n), generator=g)
    w = torch.zeros(samples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(samples, n, dtype=torch.float64))

    def quad(m: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((w @ m) * w).sum(1)

    s, n0 = quad(sx * sy), n * (n - 1) / 2
    if variant == "a":
        return (s / n0).tolist()
    off = 1 - torch.eye(n, dtype=torch.float64)
    self_ties = (w * (w - 1) / 2).sum(1)
    n1 = quad((sx == 0).double() * off) + self_ties
    n2 = quad((sy == 0).double() * off) + self_ties
    denom = ((n0 - n1) * (n0 - n2)).clamp_min(0).sqrt()
    return (s / denom)[denom > 0].tolist()


def bootstrap_kendall(x: Sequence[float], y: Sequence[float], variant: str = "a", *, samples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (``level``) of Kendall's tau over the models: the
    ``(1 -+ level) / 2`` quantiles of :func:`bootstrap_kendall_draws` (NaN when there are none, e.g.
    ``samples = 0``)."""
    check_number("bootstrap_kendall", "level", level, low=0, high=1, low_open=True, high_open=True)
    taus = torch.tensor(bootstrap_kendall_draws(x, y, variant, samples=samples, seed=seed), dtype=torch.float64)
    if taus.numel() == 0:
        return float("nan"), float("nan")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(taus, q).tolist()
    return lo, hi
