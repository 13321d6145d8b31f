"""Gradient clipping: the global gradient norm ``||(g_1, ..., g_k)||_2`` over all parameters is scaled down
to ``max_norm`` when it exceeds it (``torch.nn.utils.clip_grad_norm_``), before every optimizer step."""

from __future__ import annotations

from torch import nn

from geomopt.checks import check_number
from geomopt.train.callbacks.base import Callback, TrainState


class ClipGradNorm(Callback):
    """Clips the global gradient norm of ``state.model`` to ``max_norm`` (> 0) after every backward pass."""

    def __init__(self, max_norm: float):
        self.max_norm = check_number("ClipGradNorm", "max_norm", max_norm, low=0, low_open=True)

    def on_after_backward(self, state: TrainState) -> None:
        nn.utils.clip_grad_norm_(state.model.parameters(), self.max_norm)
