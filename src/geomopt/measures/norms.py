r"""Norm-based measures, margins and margin bounds.

Neyshabur, Bhojanapalli, McAllester & Srebro, "Exploring Generalization in Deep Learning"
(NeurIPS 2017); Bartlett, Foster & Telgarsky, "Spectrally-normalized margin bounds for neural
networks" (NeurIPS 2017); Neyshabur, Bhojanapalli & Srebro, "A PAC-Bayesian approach to
spectrally-normalized margin bounds for neural networks" (ICLR 2018).

For weighted layers ``W_1..W_d`` (forward order, BatchNorm folded), margin ``gamma`` and ``m``
training points:

- ``frobenius_product = prod_i ||W_i||_F^2``; ``spectral_product = prod_i ||W_i||_2^2`` (``||.||_2``
  the operator norm, exact for convs);
- ``l1_path = (sum_paths prod |w|)^2``, ``l2_path = sum_paths prod w^2`` (geometry's squared network;
  biases are edges from an always-on unit, max-pooling windows count every path);
- margin-normalized forms divide by ``gamma^2``;
- ``spectral_complexity = prod_i ||W_i||_2^2 sum_i ||W_i||_F^2 / ||W_i||_2^2 / gamma^2``;
- Bartlett et al. (Thm 1.1, constants and log factors other than ln W dropped):
  ``R = prod_i ||W_i||_2 (sum_i (||(W_i - M_i)^T||_{2,1} / ||W_i||_2)^{2/3})^{3/2}`` with ``M_i`` the
  initial weights (or 0), ``bartlett_bound = ||X||_F R ln(h) / (gamma m)``, ``h`` the widest layer;
- Neyshabur et al. 2018 (Thm 1, constants dropped): ``pac_bayes_spectral_bound = sqrt((B^2 d^2 h ln(d h)
  prod_i ||W_i||_2^2 sum_i ||W_i||_F^2/||W_i||_2^2 + ln(d m / delta)) / (gamma^2 m))``, ``B`` the largest
  input l2 norm.

For a conv layer ``||W||_F`` is the norm of the kernel tensor and the ``(2,1)`` norm is taken over
the kernel reshaped to ``(C_out, -1)`` (one row per output channel); the spectral norm is the
operator's (see :mod:`geomopt.measures.layers`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from geomopt.checks import check_number, check_tensor
from geomopt.measures.layers import LayerInfo, spectral_norm


def margins(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu") -> Tensor:
    """Signed classification margins ``f(x)_y - max_{j != y} f(x)_j`` of every example, in eval mode.

    Negative for a misclassified example (no absolute value is taken). Shape ``(m,)``, float64.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for x, y in batches:
                logits = model(x.to(device)).double()
                y = y.to(device)
                if logits.dim() != 2 or logits.shape[1] < 2:
                    raise ValueError(f"margins need (batch, classes >= 2) outputs, got {tuple(logits.shape)}")
                true = logits.gather(1, y[:, None]).squeeze(1)
                others = logits.scatter(1, y[:, None], float("-inf"))
                out.append(true - others.max(dim=1).values)
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("margins: the loader yielded no examples")
    return torch.cat(out).cpu()


def margin_quantile(m: Tensor, q: float) -> float:
    """The ``q`` quantile of the signed margins (linear interpolation, ``torch.quantile``)."""
    check_tensor("margin_quantile", "m", m, ndim=1)
    check_number("margin_quantile", "q", q, low=0, high=1)  # 0.05: the 5th percentile
    return float(torch.quantile(m.double(), q))


def frobenius_norm(layer: LayerInfo, weight: Tensor | None = None) -> float:
    w = layer.weight if weight is None else weight
    return float(w.detach().double().norm())


def norm_21_transposed(weight: Tensor) -> float:
    """``||W^T||_{2,1}``: the sum over output units of the l2 norm of their incoming weights."""
    return float(weight.detach().double().reshape(weight.shape[0], -1).norm(dim=1).sum())


def layer_norms(layers: list[LayerInfo], init_layers: list[LayerInfo] | None = None,
                spectral_method: str = "auto") -> list[dict[str, float]]:
    """Per-layer Frobenius norm, exact spectral norm, ``||(W - M)^T||_{2,1}`` and distances to init."""
    rows = []
    for i, layer in enumerate(layers):
        w = layer.weight.detach()
        row = {"name": layer.name, "frobenius": frobenius_norm(layer),
               "spectral": spectral_norm(layer.module, layer.input_shape, method=spectral_method),
               "fan_out": layer.fan_out}
        if init_layers is not None:
            w0 = init_layers[i].weight.detach().to(w.device, w.dtype)
            row["dist_frobenius"] = float((w - w0).double().norm())
            row["dist_spectral"] = spectral_norm(layer.module, layer.input_shape, weight=w - w0, method=spectral_method)
            row["norm21"] = norm_21_transposed(w - w0)
        else:
            row["norm21"] = norm_21_transposed(w)
        rows.append(row)
    return rows


def _log(x: float) -> float:
    return math.log(x) if x > 0 else float("-inf")


def norm_measures(rows: list[dict[str, float]]) -> dict[str, float]:
    """Products and sums of the per-layer norms (values and natural logs: products overflow)."""
    d = len(rows)
    log_fro = sum(2 * _log(r["frobenius"]) for r in rows)
    log_spec = sum(2 * _log(r["spectral"]) for r in rows)
    ratio = sum(r["frobenius"] ** 2 / r["spectral"] ** 2 if r["spectral"] > 0 else float("inf") for r in rows)
    out = {
        "log_frobenius_product": log_fro, "frobenius_product": _exp(log_fro),
        "log_spectral_product": log_spec, "spectral_product": _exp(log_spec),
        "sum_frobenius": sum(r["frobenius"] ** 2 for r in rows),
        "sum_spectral": sum(r["spectral"] ** 2 for r in rows),
        "frobenius_over_spectral": ratio,
        "log_spectral_complexity_unnormalized": log_spec + _log(ratio),
        "depth": d,
    }
    if "dist_frobenius" in rows[0]:
        out["dist_init_frobenius_sum"] = sum(r["dist_frobenius"] ** 2 for r in rows)
        out["dist_init_spectral_sum"] = sum(r["dist_spectral"] ** 2 for r in rows)
    return out


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return float("inf")


def bartlett_log_r(rows: list[dict[str, float]]) -> float:
    """``ln R`` of Bartlett et al.: ``sum ln ||W_i||_2 + 1.5 ln sum_i (||(W_i - M_i)^T||_{2,1}/||W_i||_2)^{2/3}``."""
    log_spec = sum(_log(r["spectral"]) for r in rows)
    s = sum((r["norm21"] / r["spectral"]) ** (2 / 3) for r in rows)
    return log_spec + 1.5 * _log(s)
