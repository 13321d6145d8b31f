r"""Sharpness along training: the top eigenvalue of the training loss's Hessian every ``k`` steps.

``lambda_max(H)`` of the mean loss on a fixed set of training examples, by Lanczos
(:func:`geomopt.curvature.lanczos_top_eigenvalues`, relative residual ``<= tol``, checked), warm-started
from the previous top eigenvector (which moves little between two measurements, so few products are
needed). Gradient descent on a quadratic is stable iff ``lr * lambda_max < 2``; Cohen, Kaur, Li, Kolter
& Talwalkar (ICLR 2021) found that full-batch GD drives ``lambda_max`` up to about ``2 / lr`` and holds
it there ("edge of stability").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomopt.curvature import HessianOperator, lanczos_top_eigenvalues
from geomopt.train.callbacks.step_function import StepFunction


class SharpnessTracker(StepFunction):
    """A :func:`geomopt.train.fit` callback that logs ``{"kind": "callback", "step", "sharpness": lambda_max,
    "sharpness_products": m}`` at step 0 and every ``every`` steps (``tracker(step, model)`` measures).

    Args:
        every: steps between two measurements (``>= 1``).
        batches: the fixed ``(x, y)`` batches the Hessian is taken on.
        loss_fn: mean loss, as in training.
        tol: Lanczos's relative residual tolerance.
        seed: seed of the first start vector.

    Its state (the last eigenvector) is checkpointed (key ``"callback"``), so a resumed run logs the same values.
    """

    def __init__(self, every: int, batches: Sequence[tuple[Tensor, Tensor]],
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy, *, tol: float = 1e-3,
                 seed: int = 0):
        if every < 1:
            raise ValueError(f"SharpnessTracker: every must be >= 1 step, got {every}")
        super().__init__()
        self.every, self.batches, self.loss_fn, self.tol, self.seed = every, list(batches), loss_fn, tol, seed
        self.vector: Tensor | None = None

    def __call__(self, step: int, model: nn.Module) -> dict[str, Any] | None:
        if step % self.every:
            return None
        H = HessianOperator(model, self.batches, loss_fn=self.loss_fn)
        v0 = self.vector.to(H.theta) if self.vector is not None and self.vector.shape == H.theta.shape else None
        res = lanczos_top_eigenvalues(H, 1, tol=self.tol, v0=v0, generator=torch.Generator().manual_seed(self.seed))
        self.vector = res.vectors[:, 0].detach().cpu()
        return {"sharpness": float(res.values[0]), "sharpness_products": res.products}

    def state_dict(self) -> dict[str, Any]:
        return {"vector": self.vector}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vector = state["vector"]
