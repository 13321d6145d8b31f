"""The step-by-step reference of the batch-normalized recurrences: the plain loop over time that masked
(variable-length) batches and ``fused=False`` run, and that the fused layers (:mod:`geomopt.nn.bn_rnn.fused`)
are tested against in float64. Also the pieces both share: the input terms ``BN(W_x x_t) + b`` of all steps
and the length mask.

BN-LSTM step: ``(i, f, g, o) = BN_h(W_h h_{t-1}) + BN_x(W_x x_t) + b``, ``c_t = sigmoid(f) c_{t-1} +
sigmoid(i) tanh(g)``, ``h_t = sigmoid(o) tanh(BN_c(c_t))``; BN-RNN step: ``h_t = phi(BN_h(W_h h_{t-1}) +
BN_x(W_x x_t) + b)`` (a cell without ``bn_h`` / ``bn_c`` skips that normalization).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _mask(lengths: Tensor | None, batch: int, steps: int, device: torch.device) -> Tensor | None:
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > steps).any()):
        raise ValueError(f"lengths must be in [1, {steps}] (the padded length), got {lengths.tolist()}")
    return torch.arange(steps, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def _check_input(name: str, x: Tensor, input_size: int) -> None:
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"{name} expects input of shape (batch, time, {input_size}), got {tuple(x.shape)}")


def _advance(valid: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    """The next state: ``new`` for sequences still running at this step, ``old`` for ended ones."""
    return new if valid is None else torch.where(valid.unsqueeze(1), new, old)


def _emit(valid: Tensor | None, h: Tensor) -> Tensor:
    """The output at this step: zeros after a sequence's end."""
    return h if valid is None else h * valid.unsqueeze(1)


def _input_terms(cell: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """``BN(W_x x_t) + b`` of every step ``(batch, T, F)``, normalized at once (per-step statistics of all
    steps in one pass); the step loops unbind it over time (O(T) backward)."""
    return cell.bn_x(x @ cell.weight_x.t(), 0, mask) + cell.bias


def _recurrent_term(cell: nn.Module, h: Tensor, t: int, m: Tensor | None) -> Tensor:
    """``W_h h``, batch-normalized with step ``t``'s statistics when the cell has ``bn_h``."""
    rec = h @ cell.weight_h.t()
    return rec if cell.bn_h is None else cell.bn_h(rec, t, m)


def _lstm_layer_reference(cell: nn.Module, x: Tensor, h: Tensor, c: Tensor, mask: Tensor | None
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer step by step: outputs ``(batch, T, H)`` (zeros after each sequence's end), and ``h, c`` at
    each sequence's last valid step."""
    steps = x.shape[1]
    wx = _input_terms(cell, x, mask).unbind(1)
    outputs = []
    for t in range(steps):
        m = None if mask is None else mask[:, t]
        i, f, g, o = (_recurrent_term(cell, h, t, m) + wx[t]).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new if cell.bn_c is None else cell.bn_c(c_new, t, m))
        c, h = _advance(m, c_new, c), _advance(m, h_new, h)
        outputs.append(_emit(m, h_new))
    return torch.stack(outputs, dim=1), h, c


def _rnn_layer_reference(cell: nn.Module, phi, x: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """One vanilla-RNN layer step by step (``phi``: relu or tanh): outputs ``(batch, T, H)`` (zeros after each
    sequence's end) and ``h`` at each sequence's last valid step."""
    steps = x.shape[1]
    wx = _input_terms(cell, x, mask).unbind(1)
    outputs = []
    for t in range(steps):
        m = None if mask is None else mask[:, t]
        h_new = phi(_recurrent_term(cell, h, t, m) + wx[t])
        h = _advance(m, h_new, h)
        outputs.append(_emit(m, h_new))
    return torch.stack(outputs, dim=1), h
