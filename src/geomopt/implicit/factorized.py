"""Factorized gradient descent of any depth, many runs at once.

Gunasekar et al. (2017); Arora, Cohen, Hu & Luo (2019); Arora, Cohen & Hazan (2018).

The end-to-end matrix is ``W = W_N ... W_1`` (depth N; N = 1 is plain gradient descent on W),
or ``X = U U^T`` in the symmetric depth-2 case of Gunasekar et al. An *objective* gives the loss
``L(W)`` and its gradient ``G = grad L(W)`` for a batch of end-to-end matrices; the chain rule
gives each factor's gradient

    dL/dW_j = (W_N ... W_{j+1})^T  G  (W_{j-1} ... W_1)^T,        dL/dU = (G + G^T) U,

and gradient descent updates every factor, ``W_j <- W_j - eta * dL/dW_j``. All runs of a batch
(different init scales alpha, seeds, step sizes, targets) share the factor tensors
``(B, d_out, d_in)`` and advance together with batched matmuls (no Python loop over runs).

Initialization: every factor is ``alpha^(1/N) * M_j`` with ``M_j`` Gaussian (``N(0, 1/d_in)``,
so ``||W(0)||_F ~ alpha sqrt(n)`` as in Arora et al. 2019), orthogonal or identity; or
``balanced``: ``W(0) = alpha * G`` (G Gaussian) split into balanced factors
(``W_{j+1}^T W_{j+1} = W_j W_j^T``) through its SVD and random orthogonal hidden bases.

Gradient flow is approximated by small steps; ``adaptive=True`` controls the step of each run
so that no factor changes by more than ``rel_step`` of its norm in a step, up to ``lr``, and
halves that run's cap whenever its loss goes up (the cap then regrows by 5% a step, up to ``lr``). ``time`` accumulates the steps (flow time).

Objectives: ``SensingObjective`` (``L = 1/(2m) ||A(W) - y||^2``) here, ``RegressionObjective``
(l_p regression) in :mod:`geomopt.implicit.deep_linear`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from geomopt.checks import WrongTypeError, check_int, check_number, check_tensor
from geomopt.implicit.operators import MeasurementOperator
from geomopt.implicit.spectral import effective_rank_from_sv, psd_power

INITS = ("gaussian", "orthogonal", "identity", "balanced")


class Objective(Protocol):
    """A loss of the end-to-end matrix: ``loss_and_grad(W (B, n1, n2)) -> (loss (B,), grad (B, n1, n2))``."""

    shape: tuple[int, int]

    def loss_and_grad(self, W: Tensor) -> tuple[Tensor, Tensor]: ...


class SensingObjective:
    """``L(W) = 1/(2m) ||A(W) - y||^2``, ``grad L = A*(A(W) - y) / m``.

    Args:
        op: the measurement operator.
        y: measurements ``(m,)`` shared by all runs, or ``(B, m)``, one row per run.
    """

    def __init__(self, op: MeasurementOperator, y: Tensor) -> None:
        if not isinstance(op, MeasurementOperator):
            raise WrongTypeError(f"SensingObjective: op must be a MeasurementOperator, got {type(op).__name__}")
        check_tensor("SensingObjective", "y", y, finite=False)
        if y.dim() not in (1, 2) or y.shape[-1] != op.m:
            raise ValueError(f"SensingObjective: y must have shape (m,) or (B, m) with m={op.m}, got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("SensingObjective: y contains NaN or inf")
        self.op, self.y, self.shape = op, y, op.shape

    def loss_and_grad(self, W: Tensor) -> tuple[Tensor, Tensor]:
        r = self.op.forward(W) - self.y.to(W.dtype)
        return 0.5 * (r * r).mean(-1), self.op.adjoint(r) / self.op.m

    def loss(self, W: Tensor) -> Tensor:
        r = self.op.forward(W) - self.y.to(W.dtype)
        return 0.5 * (r * r).mean(-1)


# ----------------------------------------------------------------------------- factors

def factor_shapes(shape: tuple[int, int], depth: int, width: int | None = None) -> list[tuple[int, int]]:
    """Shapes ``(d_out, d_in)`` of ``W_1 .. W_N`` for an end-to-end ``(n1, n2)`` matrix; hidden width ``width``."""
    n1, n2 = _check_shape("factor_shapes", shape)
    check_int("factor_shapes", "depth", depth, low=1)
    h = check_int("factor_shapes", "width", width, low=1) if width is not None else min(n1, n2)
    if depth == 1:
        return [(n1, n2)]
    return [(h, n2)] + [(h, h)] * (depth - 2) + [(n1, h)]


def _check_shape(where: str, shape: Sequence[int]) -> tuple[int, int]:
    """A matrix shape ``(n1, n2)`` of positive integers."""
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise WrongTypeError(f"{where}: shape must be a pair (n1, n2), got {shape!r}")
    return check_int(where, "shape[0]", shape[0], low=1), check_int(where, "shape[1]", shape[1], low=1)


def _orthogonal(rows: int, cols: int, g: torch.Generator) -> Tensor:
    a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q if rows >= cols else q.T


def _base_matrix(init: str, rows: int, cols: int, g: torch.Generator) -> Tensor | None:
    """A ``(rows, cols)`` float64 factor before scaling: Gaussian ``N(0, 1/cols)``, orthogonal or identity;
    ``None`` for any other ``init``."""
    if init == "gaussian":
        return torch.randn(rows, cols, generator=g, dtype=torch.float64) / math.sqrt(cols)
    if init == "orthogonal":
        return _orthogonal(rows, cols, g)
    if init == "identity":
        return torch.eye(rows, cols, dtype=torch.float64)
    return None


def _init_one(shape: tuple[int, int], depth: int, width: int | None, alpha: float, init: str, seed: int,
              symmetric: bool) -> list[Tensor]:
    g = torch.Generator().manual_seed(int(seed))
    if symmetric:
        m = _base_matrix(init, shape[0], width if width is not None else shape[0], g)
        if m is None:
            raise ValueError(f"symmetric factorization: init must be gaussian, orthogonal or identity, got {init!r}")
        return [math.sqrt(alpha) * m]
    shapes = factor_shapes(shape, depth, width)  # validates depth and width for every init
    if init == "balanced":
        n1, n2 = shape
        w0 = alpha * torch.randn(n1, n2, generator=g, dtype=torch.float64) / math.sqrt(n2)
        return balanced_factors(w0, depth, width, seed=int(seed) + 1)
    out = []
    s = alpha ** (1.0 / depth)
    for d_out, d_in in shapes:
        m = _base_matrix(init, d_out, d_in, g)
        if m is None:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        out.append(s * m)
    return out


def balanced_factors(W: Tensor, depth: int, width: int | None = None, *, seed: int = 0) -> list[Tensor]:
    """Split ``W (n1, n2)`` into ``depth`` balanced factors with ``W_N ... W_1 = W``.

    With ``W = U S V^T`` (thin SVD, rank k = min(n1, n2)): ``W_1 = Q_1 S^(1/N) V^T``,
    ``W_j = Q_j S^(1/N) Q_{j-1}^T``, ``W_N = U S^(1/N) Q_{N-1}^T`` with random orthonormal
    ``Q_j (width, k)``; then ``W_{j+1}^T W_{j+1} = W_j W_j^T`` (Arora, Cohen & Hazan 2018).

    Raises:
        ValueError: when ``width < min(n1, n2)`` (the factors could not represent W).
    """
    check_tensor("balanced_factors", "W", W, ndim=2)
    check_int("balanced_factors", "depth", depth, low=1)
    check_int("balanced_factors", "seed", seed)
    n1, n2 = W.shape
    k = min(n1, n2)
    h = check_int("balanced_factors", "width", width, low=1) if width is not None else k
    if depth == 1:
        return [W.clone()]
    if h < k:
        raise ValueError(f"balanced_factors: width {h} < min(n1, n2) = {k}")
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    root = torch.diag(s ** (1.0 / depth))
    g = torch.Generator().manual_seed(seed)
    qs = [_orthogonal(h, k, g).to(W.dtype) for _ in range(depth - 1)]
    factors = [qs[0] @ root @ vh]
    for j in range(1, depth - 1):
        factors.append(qs[j] @ root @ qs[j - 1].T)
    factors.append(u @ root @ qs[-1].T)
    return factors


def _check_grid(where: str, alphas: Sequence[float], seeds: Sequence[int]) -> tuple[list[float], list[int]]:
    """Init scales (finite, >= 0) and seeds (integers), each list non-empty."""
    for key, values in (("alphas", alphas), ("seeds", seeds)):
        if not isinstance(values, (Sequence, Tensor)) or isinstance(values, str) or len(values) == 0:
            raise ValueError(f"{where}: {key} must be a non-empty sequence, got {values!r}")
    return ([check_number(where, f"alphas[{i}]", a, low=0) for i, a in enumerate(alphas)],
            [check_int(where, f"seeds[{i}]", s) for i, s in enumerate(seeds)])


def init_factors(shape: tuple[int, int], depth: int, *, alphas: Sequence[float], seeds: Sequence[int],
                 init: str = "gaussian", width: int | None = None, symmetric: bool = False,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> list[Tensor]:
    """Initial factors for a batch of runs, run b with scale ``alphas[b]`` and seed ``seeds[b]``.

    Returns:
        ``[W_1, ..., W_N]``, each ``(B, d_out, d_in)`` (or ``[U]`` ``(B, n, width)`` when ``symmetric``).

    Raises:
        ValueError: bad init, depth, lengths, negative alpha, alpha = 0 at depth >= 2 (a saddle: nothing moves),
            or ``symmetric`` with depth != 2 / non-square.
        TypeError: a depth, width, size or seed that is not an integer, an alpha that is not a number.
    """
    if init not in INITS:
        raise ValueError(f"init_factors: unknown init {init!r}; choose one of {INITS}")
    _check_shape("init_factors", shape)
    check_int("init_factors", "depth", depth, low=1)
    if width is not None:
        check_int("init_factors", "width", width, low=1)
    alphas, seeds = _check_grid("init_factors", alphas, seeds)
    if len(alphas) != len(seeds):
        raise ValueError(f"init_factors: alphas and seeds must be equally long, got {len(alphas)} and {len(seeds)}")
    if (depth >= 2 or symmetric) and any(a == 0 for a in alphas):
        raise ValueError(f"init_factors: alpha = 0 at depth {depth} puts every factor at 0, a saddle where all factor "
                         "gradients vanish and gradient descent never moves; use a small alpha > 0 (alpha = 0 is "
                         "meaningful at depth 1 only)")
    if symmetric and (depth != 2 or shape[0] != shape[1]):
        raise ValueError(f"symmetric factorization X = U U^T needs depth 2 and a square matrix, got depth {depth}, "
                         f"shape {shape}")
    runs = [_init_one(shape, depth, width, float(a), init, int(s), symmetric) for a, s in zip(alphas, seeds)]
    return [torch.stack([r[j] for r in runs]).to(dtype=dtype, device=device) for j in range(len(runs[0]))]


def prefix_products(factors: Sequence[Tensor]) -> list[Tensor]:
    """``[W_1, W_2 W_1, ..., W_N ... W_1]``: the last is the end-to-end matrix, the others serve the gradients."""
    prefix = [factors[0]]
    for f in factors[1:]:
        prefix.append(f @ prefix[-1])
    return prefix


def end_to_end(factors: Sequence[Tensor], symmetric: bool = False) -> Tensor:
    """``W_N ... W_1`` (or ``U U^T``) for factors ``(B, d_out, d_in)``."""
    if symmetric:
        (u,) = factors
        return u @ u.transpose(-1, -2)
    return prefix_products(factors)[-1]


def factor_grads(factors: Sequence[Tensor], G: Tensor, symmetric: bool = False,
                 prefix: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Gradients of ``L(W_N...W_1)`` w.r.t. each factor given ``G = grad L(W)`` (module docstring);
    ``prefix``: :func:`prefix_products` of ``factors`` when already computed (saves N - 2 matmuls)."""
    if symmetric:
        (u,) = factors
        return [(G + G.transpose(-1, -2)) @ u]
    n = len(factors)
    if n == 1:
        return [G]
    if prefix is None:
        prefix = prefix_products(factors[:-1])  # prefix[j] = W_{j+1} ... W_1 (0-based)
    suffix_t = [G]  # (W_N ... W_{j+1})^T G, built from the top
    for f in reversed(factors[1:]):
        suffix_t.append(f.transpose(-1, -2) @ suffix_t[-1])
    suffix_t.reverse()  # suffix_t[j] = (W_N ... W_{j+2})^T G for 0-based factor j
    grads = [suffix_t[0]]
    for j in range(1, n):
        grads.append(suffix_t[j] @ prefix[j - 1].transpose(-1, -2))
    return grads


# ----------------------------------------------------------------------------- dynamics

@dataclass
class FactorizedResult:
    """Outcome of a batch of runs.

    Attributes:
        factors: final factors, each ``(B, d_out, d_in)``.
        W: final end-to-end matrices ``(B, n1, n2)``.
        steps: logged step indices ``(T,)``.
        history: ``loss``, ``time`` (flow time), ``nuclear``, ``erank``, ``dist`` (relative distance to the
            reference, if given) as ``(T, B)``; ``sv`` as ``(T, B, k)``; values after a run stopped repeat its last.
        steps_taken: per run, the steps it made ``(B,)``; converged / diverged flags ``(B,)``.
    """

    factors: list[Tensor]
    W: Tensor
    steps: Tensor
    history: dict[str, Tensor]
    steps_taken: Tensor
    converged: Tensor
    diverged: Tensor
    final_loss: Tensor
    meta: dict = field(default_factory=dict)


def _check_run(where: str, steps: int, log_every: int) -> None:
    check_int(where, "steps", steps, low=0)
    check_int(where, "log_every", log_every, low=1)


def _as_batch(x: float | Sequence[float] | Tensor, batch: int, name: str, dtype, device,
              where: str = "run_factorized") -> Tensor:
    """``x`` (one finite number > 0, or one per run) as a ``(batch,)`` tensor."""
    if isinstance(x, Tensor):
        check_tensor(where, name, x, ndim=(0, 1))
    elif isinstance(x, Sequence) and not isinstance(x, str):
        x = [check_number(where, f"{name}[{i}]", v, low=0, low_open=True) for i, v in enumerate(x)]
    else:
        x = check_number(where, name, x, low=0, low_open=True)
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"{where}: {name}: expected a scalar or {batch} values (one per run), got shape "
                         f"{tuple(t.shape)}")
    if not bool((t > 0).all()):
        raise ValueError(f"{where}: {name} must be > 0, got {t.tolist()}")
    return t


def run_factorized(objective: Objective, factors: Sequence[Tensor], *, lr: float | Sequence[float] | Tensor,
                   steps: int, symmetric: bool = False, adaptive: bool = False, rel_step: float = 0.01,
                   tol: float | None = None, log_every: int = 100, reference: Tensor | None = None,
                   track_sv: int = 0, progress: bool = False, desc: str = "factorized GD") -> FactorizedResult:
    """Gradient descent on the factors of a batch of runs.

    Args:
        objective: gives ``(loss (B,), grad (B, n1, n2))`` of the end-to-end matrices.
        factors: initial factors (see :func:`init_factors`); not modified.
        lr: step size, one for all runs or one per run ``(B,)``; the cap of the step when ``adaptive``.
        steps: maximal number of steps.
        symmetric: factors are ``[U]`` with ``X = U U^T``.
        adaptive: step control for gradient flow (module docstring).
        rel_step: the largest relative change of a factor in one step when ``adaptive``.
        tol: a run stops (is frozen) once its loss is at most ``tol``.
        log_every: record the trackers every this many steps (and at the first and last).
        reference: ``(n1, n2)`` or ``(B, n1, n2)``; ``history['dist']`` is ``||W - ref||_F / ||ref||_F``.
        track_sv: record the top ``track_sv`` singular values.
        progress: show a tqdm bar.

    Returns:
        A :class:`FactorizedResult`. A run whose step would make its end-to-end matrix or loss NaN/inf is
        frozen at its last finite iterate (its factors, ``W``, ``final_loss`` and history stay there) and
        flagged ``diverged``; the other runs of the batch go on unaffected.

    Raises:
        ValueError: on bad shapes or hyperparameters, non-finite initial factors, or a run at the saddle
            where every factor gradient vanishes (depth >= 2 with two or more zero factors, e.g. alpha = 0;
            ``U = 0`` when ``symmetric``).
    """
    factors = [f.clone() for f in factors]
    _check_factors(factors, symmetric)
    _check_run("run_factorized", steps, log_every)
    check_number("run_factorized", "rel_step", rel_step, low=0, low_open=True)
    if tol is not None:  # a negative tol is never reached: a silent run to `steps`
        check_number("run_factorized", "tol", tol, low=0)
    check_int("run_factorized", "track_sv", track_sv, low=0)
    if reference is not None:
        check_tensor("run_factorized", "reference", reference, ndim=(2, 3))
    history = _History(reference, track_sv, factors[0].dtype, factors[0].device)
    state = _State.start(objective, factors, symmetric, lr)
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    step = 0
    while True:
        if tol is not None:
            done = state.active & (state.loss <= tol)
            state.converged |= done
            state.active &= ~done
        if step % log_every == 0 or step == steps or not state.active.any():
            history.record(step, state.loss, state.W, state.time)
        if step >= steps or not state.active.any():
            break
        state.step(objective, adaptive, rel_step)
        step += 1
        bar.update(1)
    bar.close()
    return FactorizedResult(factors=state.factors, W=state.W, steps=torch.tensor(history.steps),
                            history=history.stacked(), steps_taken=state.taken, converged=state.converged,
                            diverged=state.diverged, final_loss=state.loss,
                            meta={"symmetric": symmetric, "adaptive": adaptive})


def _check_factors(factors: list[Tensor], symmetric: bool) -> None:
    """Raise ValueError for factors that are not ``(B, d_out, d_in)`` with one B, hold NaN/inf, or start a run at
    the saddle where every factor gradient vanishes (two or more zero factors; ``U = 0`` when ``symmetric``)."""
    if not factors or any(f.dim() != 3 or f.shape[0] != factors[0].shape[0] for f in factors):
        raise ValueError("run_factorized: factors must be a non-empty list of (B, d_out, d_in) tensors with one B; "
                         f"got shapes {[tuple(f.shape) for f in factors]}")
    for j, f in enumerate(factors):
        if not torch.isfinite(f).all():
            runs = (~torch.isfinite(f).flatten(1).all(1)).nonzero().flatten().tolist()
            raise ValueError(f"run_factorized: factor {j + 1} of run(s) {runs} has NaN/inf entries")
    zero = torch.stack([f.flatten(1).abs().amax(1) == 0 for f in factors]).sum(0)
    stuck = zero >= (1 if symmetric else 2)
    if stuck.any():
        raise ValueError(f"run_factorized: run(s) {stuck.nonzero().flatten().tolist()} start at a saddle: with "
                         f"{'U = 0' if symmetric else 'two or more zero factors'} every factor gradient is zero and "
                         "gradient descent never moves (alpha = 0 at depth >= 2); use alpha > 0")


def _forward(factors: list[Tensor], symmetric: bool) -> tuple[Tensor, list[Tensor] | None]:
    """The end-to-end matrices ``(B, n1, n2)`` and (not symmetric) the prefix products the gradients reuse."""
    if symmetric:
        return end_to_end(factors, True), None
    prefix = prefix_products(factors)
    return prefix[-1], prefix


@dataclass
class _State:
    """The iterate of a batch of factorized runs: factors, ``W``, loss and gradient, which runs are still going
    (``active``), their flags, steps taken, flow time and (adaptive) step caps."""

    factors: list[Tensor]
    prefix: list[Tensor] | None
    W: Tensor
    G: Tensor
    loss: Tensor
    symmetric: bool
    cap: Tensor
    lr_max: Tensor
    active: Tensor
    converged: Tensor
    diverged: Tensor
    taken: Tensor
    time: Tensor
    prev_loss: Tensor

    @classmethod
    def start(cls, objective: Objective, factors: list[Tensor], symmetric: bool,
              lr: float | Sequence[float] | Tensor) -> "_State":
        """The state at step 0 (a run whose initial loss is not finite starts diverged)."""
        W, prefix = _forward(factors, symmetric)
        if tuple(W.shape[1:]) != tuple(objective.shape):
            raise ValueError(f"run_factorized: the factors give {tuple(W.shape[1:])} matrices, the objective expects "
                             f"{tuple(objective.shape)}")
        B, dtype, device = W.shape[0], factors[0].dtype, factors[0].device
        lr = _as_batch(lr, B, "lr", dtype, device)
        loss, G = objective.loss_and_grad(W)
        bad = ~torch.isfinite(loss)
        return cls(factors, prefix, W, G, loss, symmetric, cap=lr, lr_max=lr.clone(), active=~bad,
                   converged=torch.zeros(B, dtype=torch.bool, device=device), diverged=bad,
                   taken=torch.zeros(B, dtype=torch.long, device=device),
                   time=torch.zeros(B, dtype=dtype, device=device),
                   prev_loss=torch.full((B,), math.inf, dtype=dtype, device=device))

    def step_sizes(self, grads: list[Tensor], adaptive: bool, rel_step: float) -> Tensor:
        """eta ``(B,)``: the cap, or (adaptive) the cap halved for runs whose loss went up (else grown by 5% up to
        lr), and at most ``rel_step / max_j ||grad_j||_F / ||W_j||_F``; 0 for runs that stopped."""
        eta = self.cap.clone()
        if adaptive:
            self.cap = torch.where(self.active & (self.loss > self.prev_loss), self.cap / 2,
                                   torch.minimum(self.cap * 1.05, self.lr_max))
            ratio = torch.stack([torch.linalg.matrix_norm(g) / torch.linalg.matrix_norm(f).clamp(min=1e-300)
                                 for f, g in zip(self.factors, grads)]).amax(0)
            eta = torch.minimum(self.cap, rel_step / ratio.clamp(min=1e-300))
        return torch.where(self.active, eta, torch.zeros_like(eta))

    def step(self, objective: Objective, adaptive: bool, rel_step: float) -> None:
        """One gradient step ``W_j <- W_j - eta grad_j`` of the active runs; a run whose step leaves the finite
        numbers is frozen at its last finite iterate and flagged diverged."""
        grads = factor_grads(self.factors, self.G, self.symmetric, self.prefix)
        eta = self.step_sizes(grads, adaptive, rel_step)
        B = eta.shape[0]
        e = eta.view(B, 1, 1)
        new_factors = [torch.where(self.active.view(B, 1, 1), f - e * g, f) for f, g in zip(self.factors, grads)]
        new_W, new_prefix = _forward(new_factors, self.symmetric)
        new_loss, new_G = objective.loss_and_grad(new_W)
        bad = self.active & ~(torch.isfinite(new_loss) & torch.isfinite(new_W).flatten(1).all(1))
        self.diverged |= bad
        moved = self.active & ~bad
        m3 = moved.view(B, 1, 1)
        self.factors = [torch.where(m3, a, b) for a, b in zip(new_factors, self.factors)]
        if self.prefix is not None:
            self.prefix = [torch.where(m3, a, b) for a, b in zip(new_prefix, self.prefix)]
        self.W, self.G = torch.where(m3, new_W, self.W), torch.where(m3, new_G, self.G)
        self.prev_loss = torch.where(moved, self.loss, self.prev_loss)
        self.loss = torch.where(moved, new_loss, self.loss)
        self.active = moved
        self.time += torch.where(moved, eta, torch.zeros_like(eta))
        self.taken += moved.long()


class _History:
    """The trackers of :func:`run_factorized` at the logged steps: loss, flow time, nuclear norm, effective rank,
    relative distance to ``reference`` and the top ``track_sv`` singular values."""

    def __init__(self, reference: Tensor | None, track_sv: int, dtype, device):
        self.reference, self.track_sv = reference, track_sv
        if reference is not None:
            self.reference = reference.to(dtype=dtype, device=device)
            self.ref_norm = torch.linalg.matrix_norm(self.reference).clamp(min=torch.finfo(dtype).tiny)
        self.logs: dict[str, list[Tensor]] = {k: [] for k in ("loss", "time", "nuclear", "erank", "dist", "sv")}
        self.steps: list[int] = []

    def record(self, step: int, loss: Tensor, W: Tensor, time: Tensor) -> None:
        sv = torch.linalg.svdvals(W)
        self.steps.append(step)
        self.logs["loss"].append(loss.clone())
        self.logs["time"].append(time.clone())
        self.logs["nuclear"].append(sv.sum(-1))
        self.logs["erank"].append(effective_rank_from_sv(sv))
        if self.reference is not None:
            self.logs["dist"].append(torch.linalg.matrix_norm(W - self.reference) / self.ref_norm)
        if self.track_sv:
            self.logs["sv"].append(sv[:, :self.track_sv].clone())

    def stacked(self) -> dict[str, Tensor]:
        """Each tracker as a ``(T, B)`` (``sv``: ``(T, B, k)``) tensor."""
        return {k: torch.stack(v) for k, v in self.logs.items() if v}


# ----------------------------------------------------------------------------- end-to-end dynamics

def _check_end_to_end(where: str, W: Tensor, G: Tensor, depth: int, lr: float | None = None,
                      min_ndim: int = 2) -> None:
    check_tensor(where, "W", W, min_ndim=min_ndim)
    check_tensor(where, "G", G, min_ndim=min_ndim)
    if W.shape != G.shape:
        raise ValueError(f"{where}: W {tuple(W.shape)} and G {tuple(G.shape)} differ in shape")
    check_int(where, "depth", depth, low=1)
    if lr is not None:
        check_number(where, "lr", lr, low=0, low_open=True)


def end_to_end_direction(W: Tensor, G: Tensor, depth: int) -> Tensor:
    """``sum_{j=1..N} (W W^T)^((j-1)/N) G (W^T W)^((N-j)/N)`` for ``(..., n1, n2)`` (Arora, Cohen & Hazan 2018).

    Under gradient flow from a balanced init, ``dW/dt = -end_to_end_direction(W, grad L(W), N)``.
    """
    _check_end_to_end("end_to_end_direction", W, G, depth)
    if depth == 1:
        return G.clone()
    wwt = W @ W.transpose(-1, -2)
    wtw = W.transpose(-1, -2) @ W
    out = torch.zeros_like(G)
    for j in range(1, depth + 1):
        out = out + psd_power(wwt, (j - 1) / depth) @ G @ psd_power(wtw, (depth - j) / depth)
    return out


def end_to_end_step(W: Tensor, G: Tensor, depth: int, lr: float) -> Tensor:
    """One step of the end-to-end update rule: ``W - lr * end_to_end_direction(W, G, depth)``."""
    check_number("end_to_end_step", "lr", lr, low=0, low_open=True)
    return W - lr * end_to_end_direction(W, G, depth)


def end_to_end_vector_step(w: Tensor, g: Tensor, depth: int, lr: float) -> Tensor:
    """Single-output closed form (Arora, Cohen & Hazan 2018, Eq. 9 / Thm. 2):
    ``w <- w - lr ||w||^(2 - 2/N) (g + (N - 1) Pr_w g)`` with ``Pr_w g = (w . g) w / ||w||^2``; ``w, g (..., d)``."""
    _check_end_to_end("end_to_end_vector_step", w, g, depth, lr, min_ndim=1)
    norm2 = (w * w).sum(-1, keepdim=True)
    proj = (w * g).sum(-1, keepdim=True) * w / norm2.clamp(min=torch.finfo(w.dtype).tiny)
    return w - lr * norm2 ** (1 - 1 / depth) * (g + (depth - 1) * proj)


def run_end_to_end(objective: Objective, W0: Tensor, depth: int, *, lr: float, steps: int,
                   log_every: int = 1) -> tuple[Tensor, Tensor]:
    """Iterate :func:`end_to_end_step` from ``W0 (B, n1, n2)``; returns ``(W_final, loss history (T, B))``."""
    check_tensor("run_end_to_end", "W0", W0, ndim=3)
    check_int("run_end_to_end", "depth", depth, low=1)
    check_number("run_end_to_end", "lr", lr, low=0, low_open=True)
    _check_run("run_end_to_end", steps, log_every)
    W = W0.clone()
    losses = []
    for step in range(steps + 1):
        loss, G = objective.loss_and_grad(W)
        if step % log_every == 0 or step == steps:
            losses.append(loss)
        if step == steps:
            break
        W = end_to_end_step(W, G, depth, lr)
    return W, torch.stack(losses)


def run_sweep(objective: Objective, *, depths: Sequence[int], alphas: Sequence[float], seeds: Sequence[int],
              init: str = "gaussian", width: int | None = None, symmetric: bool = False,
              dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
              progress: bool = False, **run_kwargs) -> dict[int, tuple[list[tuple[float, int]], FactorizedResult]]:
    """Every (alpha, seed) run of each depth in one batch: ``len(alphas) * len(seeds)`` runs per depth.

    Returns:
        ``{depth: ([(alpha, seed) of each run, in batch order], FactorizedResult)}``.
    """
    if not depths:
        raise ValueError("run_sweep: depths must be non-empty")
    alphas, seeds = _check_grid("run_sweep", alphas, seeds)
    out = {}
    runs = [(a, s) for a in alphas for s in seeds]
    for depth in depths:
        factors = init_factors(objective.shape, depth, alphas=[a for a, _ in runs], seeds=[s for _, s in runs],
                               init=init, width=width, symmetric=symmetric, dtype=dtype, device=device)
        out[depth] = (runs, run_factorized(objective, factors, symmetric=symmetric, progress=progress,
                                           desc=f"depth {depth}", **run_kwargs))
    return out
