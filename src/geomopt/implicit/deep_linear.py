"""Deep linear regression: overparameterization as acceleration, balancedness, deficiency margin.

Arora, Cohen & Hazan, "On the Optimization of Deep Networks: Implicit Acceleration by
Overparameterization", ICML 2018; Arora, Cohen, Golowich & Hu, "A Convergence Analysis of
Gradient Descent for Deep Linear Neural Networks", ICLR 2019.

- l_p regression of a linear map ``W (k, d)`` on data ``x_i (d,)``, ``y_i (k,)``:
  ``L(W) = 1/(p n) sum_i ||W x_i - y_i||_p^p``, ``grad L = 1/n sum_i sign(r_i)|r_i|^(p-1) x_i^T``.
  A depth-N linear network is ``W = W_N ... W_1`` trained by :func:`run_factorized`.
- Under gradient flow from a balanced init the end-to-end matrix follows
  ``dW/dt = -sum_j (W W^T)^((j-1)/N) grad L(W) (W^T W)^((N-j)/N)``
  (:func:`geomopt.implicit.factorized.end_to_end_direction`).
- delta-balancedness: ``max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F``.
- Deficiency margin of ``W`` w.r.t. a target ``Phi`` (loss ``0.5 ||W - Phi||_F^2``):
  ``c = sigma_min(Phi) - ||W - Phi||_F``; with ``c > 0`` and a balanced init, GD converges
  linearly, ``loss(t) <= loss(0) (1 - eta c^(2(N-1)/N))^t`` for a small enough step
  (Arora, Cohen, Golowich & Hu 2019, Theorem 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from geomopt.checks import check_int, check_number, check_tensor


class RegressionObjective:
    """``L(W) = 1/(p n) sum_i ||W x_i - y_i||_p^p`` for a batch of ``W (B, k, d)``.

    Args:
        X: inputs ``(n, d)``. Y: targets ``(n, k)``. p: the exponent (>= 2 keeps L smooth).

    Raises:
        ValueError: shape mismatch, NaN/inf in the data, or ``p < 1``.
    """

    def __init__(self, X: Tensor, Y: Tensor, p: float = 2.0) -> None:
        check_tensor("RegressionObjective", "X", X, ndim=2)
        check_tensor("RegressionObjective", "Y", Y, ndim=2)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"RegressionObjective: X must be (n, d) and Y (n, k) with the same n, got "
                             f"{tuple(X.shape)} and {tuple(Y.shape)}")
        check_number("RegressionObjective", "p", p, low=1)
        self.X, self.Y, self.p = X, Y, float(p)
        self.shape = (Y.shape[1], X.shape[1])

    def residual(self, W: Tensor) -> Tensor:
        return self.X.to(W.dtype) @ W.transpose(-1, -2) - self.Y.to(W.dtype)  # (B, n, k)

    def loss_and_grad(self, W: Tensor) -> tuple[Tensor, Tensor]:
        r = self.residual(W)
        n = r.shape[-2]
        a = r.abs()
        loss = (a ** self.p).sum((-1, -2)) / (self.p * n)
        dr = torch.sign(r) * a ** (self.p - 1)
        return loss, dr.transpose(-1, -2) @ self.X.to(W.dtype) / n


def balancedness(factors: Sequence[Tensor]) -> Tensor:
    """``max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F`` per run, factors ``(B, d_out, d_in)`` -> ``(B,)``."""
    if isinstance(factors, Tensor) or not isinstance(factors, Sequence) or not factors:
        raise ValueError(f"balancedness: factors must be a non-empty list of (B, d_out, d_in) tensors, got "
                         f"{type(factors).__name__}")
    for j, f in enumerate(factors):
        check_tensor("balancedness", f"factors[{j}]", f, min_ndim=2)
    if len(factors) < 2:
        return torch.zeros(factors[0].shape[:-2], dtype=factors[0].dtype)
    gaps = [torch.linalg.matrix_norm(b.transpose(-1, -2) @ b - a @ a.transpose(-1, -2))
            for a, b in zip(factors[:-1], factors[1:])]
    return torch.stack(gaps).amax(0)


def deficiency_margin(W: Tensor, Phi: Tensor) -> Tensor:
    """``sigma_min(Phi) - ||W - Phi||_F`` (Arora, Cohen, Golowich & Hu 2019, Def. 2); ``(..., k, d)``."""
    check_tensor("deficiency_margin", "W", W, min_ndim=2)
    check_tensor("deficiency_margin", "Phi", Phi, min_ndim=2)
    if W.shape[-2:] != Phi.shape[-2:]:
        raise ValueError(f"deficiency_margin: W {tuple(W.shape)} and Phi {tuple(Phi.shape)} differ in shape")
    return torch.linalg.svdvals(Phi)[..., -1] - torch.linalg.matrix_norm(W - Phi)


def convergence_bound(loss0: float, lr: float, margin: float, depth: int, steps: int) -> float:
    """``loss0 (1 - lr c^(2(N-1)/N))^t``: the linear rate guaranteed by a positive deficiency margin."""
    where = "convergence_bound"
    check_number(where, "loss0", loss0, low=0)
    check_number(where, "lr", lr, low=0, low_open=True)
    check_number(where, "margin", margin)
    check_int(where, "depth", depth, low=1)
    check_int(where, "steps", steps, low=0)
    if margin <= 0:
        return math.inf
    rate = lr * margin ** (2 * (depth - 1) / depth)
    return loss0 * max(1 - rate, 0.0) ** steps


def synthetic_regression(n: int, d: int, *, k: int = 1, seed: int = 0, condition: float = 10.0,
                         noise: float = 0.0, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """Ill-conditioned linear regression data: ``X (n, d)`` with singular values spaced log-uniformly over
    ``[1/condition, 1] * sqrt(n)``, ``Y = X W*^T + noise``, ``W* (k, d)`` Gaussian. Returns ``(X, Y, W*)``.

    Raises:
        ValueError: ``n < d`` (X could not have ``d`` non-zero singular values), sizes < 1, ``condition < 1``,
            negative or non-finite ``noise``. TypeError: a size or seed that is not an integer."""
    where = "synthetic_regression"
    d = check_int(where, "d", d, low=1)
    check_int(where, "n", n, low=d)
    check_int(where, "k", k, low=1)
    check_int(where, "seed", seed)
    check_number(where, "condition", condition, low=1)
    check_number(where, "noise", noise, low=0)
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(condition), d, dtype=torch.float64) * math.sqrt(n)
    X = (q1 * s) @ q2.T
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    Y = X @ W.T + noise * torch.randn(n, k, generator=g, dtype=torch.float64)
    return X.to(dtype), Y.to(dtype), W.to(dtype)


def run_scaled_gd(objective, W0: Tensor, depth: int, *, lr: float | Tensor, steps: int,
                  log_every: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Depth-1 gradient descent with the end-to-end rule's scalar factor:
    ``W <- W - lr ||W||_F^(2 - 2/N) grad L(W)``.

    For one output the depth-N end-to-end rule is ``w <- w - lr ||w||^(2-2/N) (g + (N-1) Pr_w g)``
    (Arora, Cohen & Hazan 2018, eq. 9); dropping the ``(N-1) Pr_w g`` term leaves this scaled plain GD,
    the baseline that separates depth's direction-specific effect from a larger (growing) step.

    Args:
        objective: ``loss_and_grad(W (B, k, d))``. W0: ``(B, k, d)``. depth: N (1 = plain GD).
        lr: one step size or one per run ``(B,)``. steps, log_every: as :func:`run_factorized`.

    Returns:
        ``(W, losses (T, B), diverged (B,))``; a run whose loss or ``W`` stops being finite is frozen at its
        last finite iterate and flagged.
    """
    where = "run_scaled_gd"
    check_tensor(where, "W0", W0, ndim=3)
    check_int(where, "depth", depth, low=1)
    check_int(where, "steps", steps, low=0)
    check_int(where, "log_every", log_every, low=1)
    if isinstance(lr, Tensor):
        check_tensor(where, "lr", lr, ndim=(0, 1))
        if not bool((lr > 0).all()):
            raise ValueError(f"{where}: lr must be > 0 (every entry), got {lr.tolist()}")
    else:
        check_number(where, "lr", lr, low=0, low_open=True)
    W = W0.clone()
    B = W.shape[0]
    eta = torch.as_tensor(lr, dtype=W.dtype).expand(B).reshape(B, 1, 1)
    diverged = torch.zeros(B, dtype=torch.bool)
    loss, G = objective.loss_and_grad(W)
    losses = []
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            losses.append(loss.clone())
        if step == steps:
            break
        scale = torch.linalg.matrix_norm(W).reshape(B, 1, 1) ** (2 - 2 / depth)
        new = W - eta * scale * G
        new_loss, new_G = objective.loss_and_grad(new)
        ok = ~diverged & torch.isfinite(new_loss) & torch.isfinite(new).flatten(1).all(1)
        diverged |= ~ok
        W = torch.where(ok.view(B, 1, 1), new, W)
        loss = torch.where(ok, new_loss, loss)
        G = torch.where(ok.view(B, 1, 1), new_G, G)
    return W, torch.stack(losses), diverged
