r"""Rank correlation of a measure with the generalization gap (Jiang et al. 2019, section 4).

- Kendall's tau-b (ties handled as in ``scipy.stats.kendalltau``, its default variant):
  ``tau = (C - D) / sqrt((n0 - n1) (n0 - n2))`` over all pairs, ``C``/``D`` concordant/discordant pairs,
  ``n0 = n(n-1)/2``, ``n1``/``n2`` pairs tied in x / in y.
- Granulated Kendall coefficient: for each hyperparameter ``i``, the models are grouped by the values
  of all the OTHER hyperparameters; ``m_i`` is the mean over groups (of size >= 2) of the Kendall tau
  within the group (only hyperparameter ``i`` varies in it); ``Psi = mean_i m_i``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two equal-length sequences; NaN when either is constant or n < 2."""
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
    n1, n2 = float((sx == 0).sum()), float((sy == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denom if denom > 0 else float("nan")


def granulated_kendall(hparams: Sequence[Mapping[str, Hashable]], measure: Sequence[float],
                       gap: Sequence[float]) -> dict[str, float]:
    """Per-hyperparameter ``m_i`` and their mean ``psi``.

    Args:
        hparams: one dict per model, the hyperparameter values that define it (same keys for all).
        measure, gap: the measure and the generalization gap of each model.

    Returns:
        ``{hparam: m_i, ..., "psi": mean}``; a hyperparameter with no group of >= 2 models (or
        only constant groups) gets NaN and is left out of ``psi``.
    """
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
            t = kendall_tau([measure[n] for n in idx], [gap[n] for n in idx])
            if not math.isnan(t):
                taus.append(t)
        out[key] = sum(taus) / len(taus) if taus else float("nan")
    valid = [v for v in out.values() if not math.isnan(v)]
    out["psi"] = sum(valid) / len(valid) if valid else float("nan")
    return out
