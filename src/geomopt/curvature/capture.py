r"""Collect layer inputs ``a`` and output gradients ``g`` of supported layers, by module hooks.

One mechanism for every Kronecker-factored object: a forward hook on each supported layer stores
its input and registers a tensor hook on the layer's output, which stores the gradient flowing into
it during the next backward pass(es). From these, on demand: the expanded inputs ``a``
(``(N, T, d_in)``, see :mod:`geomopt.curvature.layers`; formed once, so a convolution's patches cost
nothing on steps that do not ask for them), the output gradients ``g`` (``(N, T, d_out)``), and the
per-example gradients by the layer's own rule (:meth:`Capture.per_example_gradients`). Tensor hooks
(not the deprecated module backward hooks) also fire under ``torch.autograd.grad``, so several
backward passes through one forward (the Monte-Carlo or exact GGN passes of
:func:`backprop_output_grads`) each record their ``g``.

Conventions. With ``K`` backward passes per forward, :meth:`Capture.get` returns ``a`` of shape
``(N, T, d_in)`` and ``g`` of shape ``(K, N, T, d_out)`` such that the per-example gradient of the
combined matrix ``[W | b]`` is ``M_nk = sum_t g_nkt a_nt^T`` and the curvature being approximated is

    F = (1/N) sum_n sum_k vec(M_nk) vec(M_nk)^T.

A loss that is a *mean* over the batch gives ``(1/N)``-scaled output gradients; ``grad_scale=None``
(the default) multiplies them back by ``N`` so that ``F`` is the empirical Fisher of the per-example
losses, as in the EKFAC authors' code ("batch-size-scaled" gradients).

Micro-batches. :meth:`Capture.new_batch` starts a new micro-batch (an optimizer calls it at each
forward of the whole model); the accessors take ``batch=`` (one of :meth:`Capture.batches`). Calls of a
layer within one micro-batch are its weight-sharing calls (concatenated along ``T``); different
micro-batches are independent batches. With ``B`` micro-batches recorded, ``grad_scale=None``
multiplies micro-batch ``b``'s gradients by ``B N_b``: the loss of each micro-batch is its mean divided by
the number of micro-batches, as in gradient accumulation (for one batch: ``N``).

Likelihoods (the loss is ``-log p(y | f)`` of the network output ``f``, summed over output units):
``categorical`` (softmax cross-entropy on ``(N, C)`` logits), ``gaussian`` (``0.5 ||y - f||^2``),
``bernoulli`` (sigmoid cross-entropy on logits). :func:`backprop_output_grads` makes the
backward passes for ``fisher``:

- ``empirical``: one pass with the observed targets;
- ``true``: ``mc_samples`` passes with targets sampled from ``p(y | f)`` (scaled by ``1/sqrt(mc)``);
- ``ggn``: one pass per column of a square root of the loss Hessian w.r.t. ``f`` (``K = C``
  passes; exact expectation of the true Fisher, the generalized Gauss-Newton).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomopt.curvature.layers import LayerHandler

LIKELIHOODS = ("categorical", "gaussian", "bernoulli")
FISHERS = ("empirical", "true", "ggn")


class InertHook:
    """What a :class:`WeakHook` becomes in a copy of its model (``copy.deepcopy``, pickle, ``torch.save``):
    a module hook that does nothing."""

    def __call__(self, *args, **kwargs) -> None:
        return None

    def __repr__(self) -> str:
        return "InertHook()"


class WeakHook:
    """A module hook that calls ``owner.<method>(*extra, module, *hook_args)`` for calls of the one module it
    was registered on, reaching ``owner`` (a :class:`Capture`, an optimizer) through a weak reference.

    So a hook never keeps its owner alive (an optimizer that is dropped stops recording), a module that
    shares the hook (``copy.copy`` of a layer shares its hook dict) is ignored, and a copy of the model
    (``copy.deepcopy`` for an EMA, teacher or best model; pickle; ``torch.save(model)``) gets an
    :class:`InertHook` in its place: the copy runs and saves like the original and feeds nothing into the
    original's statistics.
    """

    def __init__(self, owner: Any, method: str, module: nn.Module, *extra: Any):
        self._owner, self._module = weakref.ref(owner), weakref.ref(module)
        self.method, self.extra = method, extra

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner()
        if owner is None or module is not self._module():
            return None
        return getattr(owner, self.method)(*self.extra, module, *args, **kwargs)

    def __reduce__(self):
        return (InertHook, ())


class _Grads(list):
    """A record's output gradients: a list its tensor hook can hold weakly."""
    __slots__ = ("__weakref__",)


def _grad_hook(grads: weakref.ref, handler: LayerHandler, module: nn.Module):
    """The tensor hook appending each gradient into the output to ``grads``.

    It holds the record's list only weakly: with ``keep_outputs`` the record holds the output, whose hook
    would otherwise close a cycle (record -> output -> hook -> record) that Python's collector does not
    break through a tensor's hooks, keeping every recorded batch and the model alive after the run.
    """
    def hook(grad: Tensor) -> None:
        g = grads()
        if g is not None:
            g.append(handler.batched(module, grad.detach()))
    return hook


class Capture:
    """Hooks that record ``a`` and ``g`` of the given layers while :attr:`active` is true.

    Args:
        layers: ``(name, module, handler)`` triples, e.g. from
            :func:`geomopt.curvature.layers.supported_layers`.
        grad_scale: factor applied to recorded output gradients; ``None`` multiplies by the batch
            size ``N`` (right for a loss averaged over the batch).

        keep_outputs: also keep the layers' output tensors (until :meth:`clear`), for
            :meth:`output_tensors`.

    Use as a context manager, or call :meth:`attach` / :meth:`remove`. Recording happens only in
    forwards with gradients enabled (never inside ``torch.no_grad()`` evaluation). The hooks are
    :class:`WeakHook` objects: they hold the Capture weakly (keep a reference to it while recording),
    ignore modules other than the ones given, and become :class:`InertHook` in a copy of the model.
    """

    def __init__(self, layers: Sequence[tuple[str, nn.Module, LayerHandler]], grad_scale: float | None = None,
                 keep_outputs: bool = False):
        self.layers = list(layers)
        self.grad_scale = grad_scale
        self.keep_outputs = keep_outputs
        self.active = True
        self._handles: list = []
        self._calls: dict[str, list[dict]] = {name: [] for name, _, _ in self.layers}
        self._layer = {name: (module, handler) for name, module, handler in self.layers}
        self._batch = 0

    def attach(self) -> Capture:
        if not self._handles:
            for name, module, handler in self.layers:
                self._handles.append(module.register_forward_hook(WeakHook(self, "_record", module, name, handler)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Capture:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def clear(self, backpropagated_only: bool = False) -> None:
        """Drop the records (``backpropagated_only``: only those whose output already received a gradient,
        keeping forwards still waiting for their backward pass)."""
        for calls in self._calls.values():
            calls[:] = [c for c in calls if not c["g"]] if backpropagated_only else []

    def new_batch(self) -> None:
        """Records from now on belong to a new micro-batch (see the module docstring)."""
        self._batch += 1

    @property
    def batch(self) -> int:
        """The id of the current micro-batch."""
        return self._batch

    def batches(self, name: str) -> list[int]:
        """The micro-batches with a complete record of layer ``name`` (every call has an output gradient)."""
        calls = self._calls.get(name, [])
        ids = sorted({c["batch"] for c in calls})
        return [b for b in ids if all(c["g"] for c in calls if c["batch"] == b)]

    def _record(self, name: str, handler: LayerHandler, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        """The forward hook of layer ``name`` (through a :class:`WeakHook`)."""
        if not self.active or not torch.is_grad_enabled():
            return
        x = handler.batched(module, inputs[0].detach())  # expanded (patches) only when asked: inputs()
        record = {"x": x, "x_version": x._version, "a": None, "g": _Grads(), "batch": self._batch}
        self._calls[name].append(record)
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(_grad_hook(weakref.ref(record["g"]), handler, module))
            if self.keep_outputs:
                record["out"] = (output, output._version)

    def output_tensors(self, batch: int | None = None) -> list[Tensor] | None:
        """The recorded layers' outputs (``keep_outputs=True``; of micro-batch ``batch`` if given):
        backpropagating to them (``inputs=`` of ``torch.autograd.grad``) makes every ``g`` recorded without
        computing any parameter gradient. ``None`` when one was not kept or was modified in place since
        (then the gradient it would receive is not the layer output's, so backpropagate to the parameters
        instead)."""
        outs = []
        for calls in self._calls.values():
            for c in calls:
                if batch is not None and c["batch"] != batch:
                    continue
                if "out" not in c or c["out"][0]._version != c["out"][1]:
                    return None
                outs.append(c["out"][0])
        return outs or None

    def names(self) -> list[str]:
        """Layers that have a complete record (inputs and at least one output gradient) of some micro-batch."""
        return [n for n in self._calls if self.batches(n)]

    def get(self, name: str, batch: int | None = None) -> tuple[Tensor, Tensor]:
        """``a`` ``(N, T, d_in)`` and ``g`` ``(K, N, T, d_out)`` of layer ``name``: :meth:`inputs` and
        :meth:`output_grads`.

        A layer called several times between two :meth:`clear` calls (weight sharing) has its
        calls concatenated along the position axis ``T`` (the KFC/"expand" treatment of shared
        weights); clear between independent batches, or start micro-batches (:meth:`new_batch`) and
        pass ``batch``. ``batch=None``: the calls of every complete micro-batch.

        Raises:
            RuntimeError: nothing recorded for ``name``, calls with unequal batch sizes or
                numbers of passes, or an input modified in place since its forward.
        """
        return self.inputs(name, batch), self.output_grads(name, batch)

    def _complete_calls(self, name: str, batch: int | None = None) -> list[dict]:
        done = self.batches(name)
        calls = [c for c in self._calls.get(name, []) if c["batch"] in done and (batch is None or c["batch"] == batch)]
        if not calls:
            raise RuntimeError(f"Capture: no complete forward/backward record for layer {name!r}; run a forward "
                               "with gradients enabled and a backward through its output first")
        ks = {len(c["g"]) for c in calls}
        if len(ks) != 1:
            raise RuntimeError(f"Capture: layer {name!r} has calls with different numbers of backward passes {ks}")
        if len(calls) > 1 and len({c["x"].shape[0] for c in calls}) != 1:
            raise RuntimeError(f"Capture: layer {name!r} was called {len(calls)} times with different batch sizes "
                               f"{[c['x'].shape[0] for c in calls]}; call clear() between independent batches")
        return calls

    def _scale(self, record: dict, name: str) -> float:
        if self.grad_scale is not None:
            return self.grad_scale
        return record["x"].shape[0] * len(self.batches(name))

    @staticmethod
    def _input(record: dict, name: str) -> Tensor:
        if record["x"]._version != record["x_version"]:
            raise RuntimeError(f"Capture: the input of layer {name!r} was modified in place after its forward; "
                               "its statistics cannot be formed")
        return record["x"]

    def inputs(self, name: str, batch: int | None = None) -> Tensor:
        """Expanded inputs ``a`` ``(N, T, d_in)`` (KFC patches for convolutions), formed on the first
        call after the backward pass and kept until :meth:`clear`."""
        module, handler = self._layer[name]
        a_list = []
        for c in self._complete_calls(name, batch):
            if c["a"] is None:
                c["a"] = handler.inputs(module, self._input(c, name))
            a_list.append(c["a"])
        return a_list[0] if len(a_list) == 1 else torch.cat(a_list, dim=1)

    def output_grads(self, name: str, batch: int | None = None) -> Tensor:
        """Output gradients ``g`` ``(K, N, T, d_out)`` (multiplied by the batch size for ``grad_scale=None``)."""
        module, handler = self._layer[name]
        g_list = []
        for c in self._complete_calls(name, batch):
            scale = self._scale(c, name)  # on the raw gradient: contiguous, cheaper than on the (N, T, d_out) view
            gs = [handler.output_grads(module, g * scale if scale != 1 else g) for g in c["g"]]
            g_list.append(gs[0].unsqueeze(0) if len(gs) == 1 else torch.stack(gs))  # (K, N, T, d_out)
        return g_list[0] if len(g_list) == 1 else torch.cat(g_list, dim=2)

    def grad_shape(self, name: str, batch: int | None = None) -> torch.Size:
        """The shape ``(K, N, T, d_out)`` of :meth:`output_grads`, without forming it."""
        module, handler = self._layer[name]
        calls = self._complete_calls(name, batch)
        shapes = [handler.output_grads(module, c["g"][0]).shape for c in calls]  # views: nothing copied
        return torch.Size((len(calls[0]["g"]), shapes[0][0], sum(s[1] for s in shapes), shapes[0][2]))

    def per_example_gradients(self, name: str, start: int = 0, stop: int | None = None,
                              batch: int | None = None) -> Tensor:
        """``M_nk = sum_t g_nkt a_nt^T`` of examples ``start:stop``, ``(K, n, d_out, d_in)``, by the
        layer's own per-example rule (:meth:`LayerHandler.per_example_gradients`: for convolutions a
        grouped weight-gradient convolution, no patches), summed over the layer's calls."""
        module, handler = self._layer[name]
        total = None
        for c in self._complete_calls(name, batch):
            gs = [g[start:stop] for g in c["g"]]
            m = handler.per_example_gradients(module, self._input(c, name)[start:stop],
                                              gs[0][None] if len(gs) == 1 else torch.stack(gs))
            scale = self._scale(c, name)
            m = m.mul_(scale) if scale != 1 else m
            total = m if total is None else total.add_(m)
        return total


def _check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")


def sample_targets(output: Tensor, likelihood: str, generator: torch.Generator | None = None) -> Tensor:
    """Targets drawn from the model's predictive distribution ``p(y | f = output)``."""
    _check_likelihood(likelihood)
    f = output.detach()
    if likelihood == "categorical":
        probs = torch.softmax(f.reshape(-1, f.shape[-1]).double(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).reshape(f.shape[:-1])
    if likelihood == "gaussian":
        return f + torch.randn(f.shape, generator=generator, dtype=f.dtype, device=f.device)
    return torch.bernoulli(torch.sigmoid(f), generator=generator)


def nll_grad(output: Tensor, target: Tensor, likelihood: str) -> Tensor:
    """``d/d f [-log p(target | f)]`` per example, closed form, shaped like ``output``."""
    _check_likelihood(likelihood)
    f = output.detach()
    if likelihood == "categorical":
        if target.shape != f.shape[:-1]:
            raise ValueError(f"categorical likelihood: targets of shape {tuple(target.shape)} do not match "
                             f"logits of shape {tuple(f.shape)} (expected {tuple(f.shape[:-1])})")
        return torch.softmax(f, dim=-1) - nn.functional.one_hot(target.long(), f.shape[-1]).to(f.dtype)
    if target.shape != f.shape:
        raise ValueError(f"{likelihood} likelihood: targets of shape {tuple(target.shape)} do not match "
                         f"outputs of shape {tuple(f.shape)}")
    if likelihood == "gaussian":
        return f - target.to(f.dtype)
    return torch.sigmoid(f) - target.to(f.dtype)


def hessian_sqrt_columns(output: Tensor, likelihood: str) -> Tensor:
    """``S`` of shape ``(K, *output.shape)`` with ``sum_k S_k S_k^T`` = Hessian of the NLL w.r.t. ``f``
    per example (categorical: ``diag(p) - p p^T = S S^T`` with ``S = diag(sqrt p) - p sqrt(p)^T``)."""
    _check_likelihood(likelihood)
    f = output.detach()
    if likelihood == "gaussian":
        eye = torch.eye(f[0].numel(), dtype=f.dtype, device=f.device)
        return eye.reshape((-1, 1) + f.shape[1:]).expand((-1,) + f.shape).clone()
    if likelihood == "bernoulli":
        p = torch.sigmoid(f).flatten(1)
        d = (p * (1 - p)).sqrt()
        cols = torch.diag_embed(d).permute(2, 0, 1)  # (D, N, D)
        return cols.reshape((-1,) + f.shape)
    p = torch.softmax(f, dim=-1)
    sq = p.sqrt()
    s = torch.diag_embed(sq) - p.unsqueeze(-1) * sq.unsqueeze(-2)  # (..., C out-unit, C column)
    return s.movedim(-1, 0)  # (C, ..., C)


def output_hessian_gram(output: Tensor, directions: Tensor, likelihood: str) -> Tensor:
    """``sum_n u_in^T H_n u_jn`` ``(R, R)`` (float64) for output perturbations ``directions`` ``(R, *output.shape)``
    (e.g. Jacobian-vector products) and ``H_n`` the Hessian of the NLL w.r.t. the output per example
    (:func:`hessian_sqrt_columns`: categorical ``diag(p) - p p^T`` over the last axis, gaussian ``I``,
    bernoulli ``diag(p (1 - p))``), summed over examples and positions."""
    _check_likelihood(likelihood)
    f, u = output.detach().double(), directions.detach().double()
    flat = u.reshape(u.shape[0], -1)
    if likelihood == "gaussian":
        return flat @ flat.T
    if likelihood == "bernoulli":
        p = torch.sigmoid(f)
        return (u * (p * (1 - p))).reshape(u.shape[0], -1) @ flat.T
    p = torch.softmax(f, dim=-1)
    pu = (u * p).sum(-1).reshape(u.shape[0], -1)
    return (u * p).reshape(u.shape[0], -1) @ flat.T - pu @ pu.T


def backprop_output_grads(output: Tensor, params: Sequence[Tensor], *, fisher: str, likelihood: str,
                          target: Tensor | None = None, generator: torch.Generator | None = None,
                          mc_samples: int = 1) -> int:
    """Backward passes from ``output`` that make a :class:`Capture` record ``g`` for ``fisher``.

    The cotangents are per-example (summed loss, not averaged): use ``Capture(grad_scale=1)``.
    Gradients are taken with ``torch.autograd.grad`` with respect to ``params`` (the parameters, or
    cheaper, the layers' outputs from :meth:`Capture.output_tensors`) and discarded (``.grad`` is
    not touched).

    Returns:
        the number of passes ``K``.

    Raises:
        FloatingPointError: ``output`` has NaN/inf entries.
    """
    if fisher not in FISHERS:
        raise ValueError(f"unknown fisher {fisher!r}; choose one of {FISHERS}")
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    params = [p for p in params if p.requires_grad]
    if not bool(torch.isfinite(output.detach()).all()):
        raise FloatingPointError(f"backprop_output_grads: the model's output has NaN/inf entries; no {fisher} Fisher "
                                 "targets can be formed (a NaN/inf input or parameter reached it)")
    if fisher == "empirical":
        if target is None:
            raise ValueError("fisher='empirical' needs the observed targets")
        cotangents = [nll_grad(output, target, likelihood)]
    elif fisher == "true":
        scale = 1.0 / math.sqrt(mc_samples)
        cotangents = [nll_grad(output, sample_targets(output, likelihood, generator), likelihood) * scale
                      for _ in range(mc_samples)]
    else:
        cotangents = list(hessian_sqrt_columns(output, likelihood))
    for k, cot in enumerate(cotangents):
        torch.autograd.grad(output, params, grad_outputs=cot, retain_graph=k < len(cotangents) - 1,
                            allow_unused=True)
    return len(cotangents)
