r"""Exact curvature matrices of a model's loss as linear operators on the flattened parameters.

For parameters ``theta`` (all trainable ones, or a chosen subset, flattened in ``named_parameters``
order), network outputs ``f_n = f(x_n; theta)``, a loss averaged over the ``N`` examples of the data
``L(theta) = (1/N) sum_n l(f_n, y_n)`` and the output Jacobians ``J_n = d f_n / d theta``:

- Hessian: ``H = d^2 L / d theta^2``; ``H v`` by reverse-over-reverse differentiation (Pearlmutter
  1994): the gradient's graph is built once, each product is one more backward pass;
- generalized Gauss-Newton (Schraudolph 2002): ``G = (1/N) sum_n J_n^T H_n J_n`` with ``H_n`` the
  Hessian of the loss in the outputs; ``G v`` = ``vjp(H_n jvp(v))``, ``H_n`` applied by a
  Hessian-vector product in the outputs (any loss function);
- Fisher of the likelihood ``p(y | f)`` (``categorical``, ``gaussian``, ``bernoulli``; see
  :mod:`geomopt.curvature.capture`), with ``r_n = d/d f [-log p(y | f_n)]``:

  * ``empirical``: ``(1/N) sum_n J_n^T r_n r_n^T J_n`` with the observed targets;
  * ``mc``: the same with ``mc_samples`` targets drawn from ``p(y | f_n)`` once, at construction
    (so the operator is one fixed matrix), each term scaled by ``1 / mc_samples``;
  * ``true``: its expectation ``(1/N) sum_n J_n^T E_y[r r^T] J_n = (1/N) sum_n J_n^T S_n S_n^T J_n``,
    ``S_n`` the closed-form square root of the NLL's output Hessian (equal to the GGN of the mean NLL:
    these likelihoods are exponential families in their natural parameters; Martens 2020).

Data are a ``(x, y)`` pair or an iterable of them (a DataLoader); batches are read once, at
construction, and kept (on the model's device), so every product sees the same matrix. Products
run with the model in eval mode (dropout off, BatchNorm running statistics) through
``torch.func.functional_call``; the model's parameters are never modified.

Example:
    >>> H = HessianOperator(model, loader)                      # or GGNOperator, FisherOperator
    >>> H.mv(v); H.matmat(V); H.to_dense(); H.to_scipy()        # v: (H.shape[0],)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from geomopt.curvature.capture import LIKELIHOODS, hessian_sqrt_columns, nll_grad, sample_targets
from geomopt.checks import first_non_finite

FISHER_KINDS = ("empirical", "mc", "true")
OPERATORS = ("hessian", "ggn", "fisher")


def read_batches(data, device: torch.device | str | None = None, max_examples: int | None = None, *,
                 what: str = "curvature data") -> list[tuple[Tensor, Tensor]]:
    """A ``(x, y)`` pair or an iterable of pairs as a list of batches on ``device`` (the first
    ``max_examples`` examples when given; ``device=None`` leaves them where they are).

    Raises:
        ValueError: no examples, a batch that is not an ``(x, y)`` pair, or ``max_examples`` not an
            integer >= 1.
    """
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise ValueError(f"{what}: max_examples must be an integer >= 1 (or None for all), got {max_examples!r}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        data = [tuple(data)]
    out, count = [], 0
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"{what}: expected (x, y) batches, got a {type(batch).__name__}")
        x, y = batch
        if max_examples is not None:
            x, y = x[:max_examples - count], y[:max_examples - count]
        if len(x):
            out.append((x.to(device), y.to(device)))
        count += len(x)
        if max_examples is not None and count >= max_examples:
            break
    if not out:
        raise ValueError(f"{what}: the data yielded no examples")
    return out


class _EvalMode:
    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


class CurvatureOperator:
    """A symmetric ``(d, d)`` curvature matrix of ``model``'s loss on ``data``, applied by products.

    Args:
        model: the network (outputs ``f``); not modified.
        data: an ``(x, y)`` pair or an iterable of them (read once, see the module docstring).
        params: names of the parameters the operator acts on (default: every trainable one), in
            the order of ``model.named_parameters()``; the others are held fixed.
        loss_fn: ``loss_fn(output, target)``, a mean over the batch (cross-entropy by default).
        max_examples: use only the first this many examples of ``data``.
        cache: keep each batch's linearization (its forward and backward graph) after the first
            product, so later products cost only the backward-of-backward (memory: that graph for
            every batch); ``False`` recomputes it in every product.

    Attributes:
        names: the parameters, in the order of the flat vector; ``shapes`` and ``numels`` alike.
        theta: the flattened parameter values ``(d,)``.
        num_examples: ``N``.
        products: how many matrix-vector products were applied (each is one pass over the data).

    Raises:
        ValueError: an unknown or frozen parameter name, an empty subset, or empty data.
        FloatingPointError: a NaN or inf in a parameter, a buffer or the data (the message names it).
    """

    def __init__(self, model: nn.Module, data, *, params: Sequence[str] | None = None,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                 max_examples: int | None = None, cache: bool = True):
        named = dict(model.named_parameters())
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
        else:
            unknown = [n for n in params if n not in named]
            if unknown:
                raise ValueError(f"{type(self).__name__}: unknown parameter(s) {unknown}; the model has {list(named)}")
            wanted = set(params)
            names = [n for n in named if n in wanted]
        if not names:
            raise ValueError(f"{type(self).__name__}: no parameter to act on ({type(model).__name__} has no trainable "
                             "parameter, or params=[] was given)")
        self.model, self.loss_fn = model, loss_fn
        self.names = names
        self.shapes = [named[n].shape for n in names]
        self.numels = [named[n].numel() for n in names]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in names])
        self._fixed = {**{n: p.detach() for n, p in named.items() if n not in set(names)},
                       **dict(model.named_buffers())}
        self.batches = read_batches(data, self.theta.device, max_examples)
        bad = first_non_finite([*((f"parameter '{n}'", p) for n, p in named.items()),
                                *((f"buffer '{n}'", b) for n, b in model.named_buffers()),
                                *((f"the data's batch {i} {'xy'[j]}", t) for i, batch in enumerate(self.batches)
                                  for j, t in enumerate(batch))])
        if bad is not None:
            raise FloatingPointError(f"{type(self).__name__}: {bad}; a diverged model or corrupt data has no "
                                     "meaningful curvature")
        self.num_examples = sum(len(y) for _, y in self.batches)
        self.products = 0
        self.cache = cache
        self._cache: dict[int, Callable[[Tensor], Tensor]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        d = self.theta.numel()
        return (d, d)

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``{name: tensor}`` from a flat ``(d,)`` vector (views)."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def flatten(self, tensors: dict[str, Tensor] | Sequence[Tensor]) -> Tensor:
        """A flat ``(d,)`` vector from per-parameter tensors (a dict by name, or a list in order)."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([t.reshape(-1) for t in tensors])

    def output(self, theta: Tensor, x: Tensor) -> Tensor:
        """The network's output at flat parameters ``theta`` (differentiable in ``theta``)."""
        return functional_call(self.model, {**self._fixed, **self.unflatten(theta)}, (x,))

    def _check(self, v: Tensor, what: str) -> None:
        if not isinstance(v, Tensor) or v.shape[0] != self.shape[0] or v.dim() > 2:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"{type(self).__name__}.{what}: expected a ({self.shape[0]},) vector or "
                             f"({self.shape[0]}, k) matrix over {len(self.names)} parameter tensor(s), got {got}")

    def _product(self, x: Tensor, y: Tensor, index: int) -> Callable[[Tensor], Tensor]:
        """The linear map ``v -> C_b v`` of batch ``index`` (its forward and backward passes done once),
        applied to a vector ``(d,)`` or to ``k`` vectors at once ``(k, d)``."""
        raise NotImplementedError

    def _products(self):
        """``(weight n_b / N, product of batch b)``, formed on first use and kept when ``cache``."""
        for i, (x, y) in enumerate(self.batches):
            fn = self._cache.get(i)
            if fn is None:
                fn = self._product(x, y, i)
                if self.cache:
                    self._cache[i] = fn
            yield len(y) / self.num_examples, fn

    def mv(self, v: Tensor) -> Tensor:
        """The product with a vector ``v`` ``(d,)`` -> ``(d,)``: the batches' products weighted by their sizes."""
        self._check(v, "mv")
        if v.dim() == 2:
            return self.matmat(v)
        v = v.to(self.dtype)
        out = torch.zeros_like(self.theta)
        with _EvalMode(self.model):
            for w, fn in self._products():
                out.add_(fn(v), alpha=w)
        self.products += 1
        return out

    def matmat(self, V: Tensor, chunk: int = 16) -> Tensor:
        """The product with ``V`` ``(d, k)`` -> ``(d, k)``, ``chunk`` columns at a time (batched products)."""
        self._check(V, "matmat")
        if V.dim() == 1:
            return self.mv(V)
        V = V.to(self.dtype)
        out = torch.zeros_like(V)
        with _EvalMode(self.model):
            for w, fn in self._products():
                for start in range(0, V.shape[1], chunk):
                    out[:, start:start + chunk].add_(fn(V[:, start:start + chunk].T.contiguous()).T, alpha=w)
        self.products += V.shape[1]
        return out

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matmat(v) if v.dim() == 2 else self.mv(v)

    def to_dense(self, chunk: int = 64) -> Tensor:
        """The ``(d, d)`` matrix, from products with the identity's columns."""
        eye = torch.eye(self.shape[0], dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[:, i:i + chunk]) for i in range(0, self.shape[0], chunk)], dim=1)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy vectors in and out)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def matvec(v):
            t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1), dtype=self.dtype, device=self.device)
            return self.mv(t).detach().cpu().double().numpy()

        def matmat(V):
            t = torch.as_tensor(np.asarray(V, dtype=np.float64), dtype=self.dtype, device=self.device)
            return self.matmat(t).detach().cpu().double().numpy()

        return LinearOperator(self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, rmatmat=matmat,
                              dtype=np.float64)

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """``L(theta)`` and its gradient ``(d,)`` over the data."""
        total, g = 0.0, torch.zeros_like(self.theta)
        with _EvalMode(self.model):
            for x, y in self.batches:
                gb, lb = grad(lambda t: (self.loss_fn(self.output(t, x), y),) * 2, has_aux=True)(self.theta)
                w = len(y) / self.num_examples
                total += float(lb) * w
                g.add_(gb, alpha=w)
        return total, g


def _batched(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` on one vector ``(d,)``, or by ``torch.func.vmap`` on a batch ``(k, d)``."""
    return lambda v: fn(v) if v.dim() == 1 else vmap(fn)(v)


class HessianOperator(CurvatureOperator):
    """The Hessian of the mean loss: ``H v = d/d theta <grad L(theta), v>``, reverse over reverse: the
    gradient's graph is built once per batch, each product is one backward through it (a batch of
    vectors by ``is_grads_batched``)."""

    def _product(self, x: Tensor, y: Tensor, index: int) -> Callable[[Tensor], Tensor]:
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss_fn(self.output(theta, x), y), theta, create_graph=True)
        return lambda v: torch.autograd.grad(g, theta, v, retain_graph=True, is_grads_batched=v.dim() == 2)[0]


class GGNOperator(CurvatureOperator):
    """The generalized Gauss-Newton ``(1/N) sum_n J_n^T H_n J_n`` of the mean loss (any ``loss_fn``)."""

    def _product(self, x: Tensor, y: Tensor, index: int) -> Callable[[Tensor], Tensor]:
        f = lambda t: self.output(t, x)  # noqa: E731
        out, pull = vjp(f, self.theta)
        hess = vjp(grad(lambda o: self.loss_fn(o, y)), out.detach())[1]  # H_loss u (the batch mean's 1/n_b inside)
        return _batched(lambda v: pull(hess(jvp(f, (self.theta,), (v,))[1])[0])[0])


class FisherOperator(CurvatureOperator):
    """The Fisher of ``p(y | f)``: ``kind`` ``empirical`` | ``mc`` | ``true`` (module docstring).

    Args:
        likelihood: ``categorical`` (logits ``(N, C)``), ``gaussian`` or ``bernoulli``.
        kind: which Fisher.
        mc_samples: targets drawn per example for ``kind='mc'``.
        generator: the draws' random generator (``kind='mc'``).
        (the rest as :class:`CurvatureOperator`; ``loss_fn`` is used only by :meth:`loss_and_gradient`.)
    """

    def __init__(self, model: nn.Module, data, *, likelihood: str = "categorical", kind: str = "true",
                 mc_samples: int = 1, generator: torch.Generator | None = None, **kwargs):
        if kind not in FISHER_KINDS:
            raise ValueError(f"FisherOperator: unknown kind {kind!r}; choose one of {FISHER_KINDS}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"FisherOperator: unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        if mc_samples < 1:
            raise ValueError(f"FisherOperator: mc_samples must be >= 1, got {mc_samples}")
        super().__init__(model, data, **kwargs)
        self.likelihood, self.kind, self.mc_samples = likelihood, kind, mc_samples
        self.samples: list[Tensor] | None = None  # kind='mc': (mc_samples, n_b, ...) targets per batch
        if kind == "mc":
            with torch.no_grad(), _EvalMode(model):
                self.samples = [torch.stack([sample_targets(self.output(self.theta, x), likelihood, generator)
                                             for _ in range(mc_samples)]) for x, _ in self.batches]

    def _columns(self, out: Tensor, y: Tensor, index: int) -> Tensor:
        """``(K, n_b, ...)`` output-space vectors ``c_k`` with ``F_b = (1/n_b) sum_{n,k} J_n^T c_nk c_nk^T J_n``."""
        if self.kind == "true":
            return hessian_sqrt_columns(out, self.likelihood)
        if self.kind == "empirical":
            return nll_grad(out, y, self.likelihood).unsqueeze(0)
        draws = [nll_grad(out, s, self.likelihood) for s in self.samples[index]]
        return torch.stack(draws) / math.sqrt(self.mc_samples)

    def _product(self, x: Tensor, y: Tensor, index: int) -> Callable[[Tensor], Tensor]:
        f = lambda t: self.output(t, x)  # noqa: E731
        out, pull = vjp(f, self.theta)
        cols = self._columns(out.detach(), y, index)  # (K, n_b, ...)
        flat = cols.flatten(2)  # (K, n_b, D)

        def product(v: Tensor) -> Tensor:
            jv = jvp(f, (self.theta,), (v,))[1].reshape(flat.shape[1:])
            coef = (flat * jv).sum(-1, keepdim=True)  # c_nk . (J_n v): (K, n_b, 1)
            return pull(((flat * coef).sum(0) / len(y)).reshape(out.shape))[0]
        return _batched(product)


def curvature_operator(kind: str, model: nn.Module, data, **kwargs) -> CurvatureOperator:
    """``hessian`` | ``ggn`` | ``fisher`` (``fisher_kind=`` ``empirical`` | ``mc`` | ``true``) by name."""
    if kind == "hessian":
        return HessianOperator(model, data, **kwargs)
    if kind == "ggn":
        return GGNOperator(model, data, **kwargs)
    if kind == "fisher":
        fisher_kind = kwargs.pop("fisher_kind", "true")
        return FisherOperator(model, data, kind=fisher_kind, **kwargs)
    raise ValueError(f"unknown curvature operator {kind!r}; choose one of {OPERATORS}")


class ScaledOperator:
    """``D A D`` for a diagonal ``D = diag(s)``: e.g. ``s = |theta|`` makes a Hessian whose spectrum is
    invariant to rescaling a ReLU network's layers (``theta -> T theta`` with ``T`` diagonal gives
    ``H -> T^-1 H T^-1`` and ``diag(theta) H diag(theta)`` unchanged)."""

    def __init__(self, op, scale: Tensor):
        if scale.shape != (op.shape[0],):
            raise ValueError(f"ScaledOperator: scale of shape {tuple(scale.shape)} for an operator of shape {op.shape}")
        self.op, self.scale = op, scale.to(op.dtype)
        self.shape, self.dtype, self.device = op.shape, op.dtype, op.device

    def mv(self, v: Tensor) -> Tensor:
        return self.scale * self.op.mv(self.scale * v)

    def matmat(self, V: Tensor) -> Tensor:
        return self.scale[:, None] * self.op.matmat(self.scale[:, None] * V)

