r"""Path norms and path scales of positively homogeneous networks, by the squared-network trick.

For a ReLU network seen as a DAG (biases are edges from an always-on unit), the path
regularizer is

    pi_p(w) = sum over input->output paths P of prod_{e in P} |w_e|^p,

and the path norm is ``pi_p(w) ** (1/p)``. The *scale* of an edge is

    gamma_e(w) = d pi_p / d(|w_e|^p) = sum over paths through e of prod_{e' in P, e' != e} |w_e'|^p
               = gamma_in(u) * gamma_out(v)     for e = u -> v.

Squared-network trick (Neyshabur et al. 2015): replace every parameter by |w|^p, turn every
pooling into the sum over its window with each fixed edge weight raised to the power p (max
pooling: all paths on), feed an all-ones input and sum the outputs. With nonnegative weights
every ReLU is the identity, so that number is pi_p and its gradient with respect to the
powered parameters is gamma: one batch-1 forward and backward, no path enumeration.

For a chain of Linear layers (an MLP) gamma of a weight matrix is the outer product
``gamma_out (x) gamma_in``; :class:`PathScales` then keeps the two vectors
(:class:`RankOneScale`) and never materializes gamma, so Path-SGD costs few passes over the
weights.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from geomopt.checks import check_finite_parameters


class UnsupportedModuleError(ValueError):
    """A module or operation that is not positively homogeneous (or not supported) was found."""


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PASS_THROUGH = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_FUNCTIONS = {operator.add, torch.add, torch.flatten, torch.relu, F.relu, torch.cat, operator.getitem}
_METHODS = {"view", "reshape", "flatten", "size", "relu", "contiguous", "add", "squeeze", "unsqueeze"}


# Rows of a weight matrix processed at once on CPU: 2^18 elements (1 MiB in float32) stay in cache.
BLOCK_ELEMENTS = 1 << 18

BlockVisitor = Callable[[int, int, Tensor], None]
"""``visit(r0, r1, scratch)``: called on rows ``[r0, r1)`` of a weight matrix during a blocked pass over
it; ``scratch`` is a cache-resident buffer of the block's shape ``(r1 - r0, in)`` that the visitor may
overwrite (the pass reuses it after the visit). A visitor may also have a method
``fused_contract(vin, vout)`` that visits all rows and returns the contractions of the visited weight
``(W^2 @ vin, (W^2)^T @ vout)`` (None where ``vin`` / ``vout`` is None) in one pass of its own, or None
to be visited block by block; :class:`PathScales` (p = 2) calls it first (PathSGD's C kernel)."""


def row_block(weight: Tensor) -> int:
    """Rows of ``weight`` (out, in) handled at once: a cache-sized block on CPU, all rows elsewhere."""
    rows, cols = weight.shape
    return rows if weight.device.type != "cpu" else max(1, min(rows, BLOCK_ELEMENTS // max(cols, 1)))


def visit_rows(weight: Tensor, visit: BlockVisitor) -> None:
    """Call ``visit(r0, r1, scratch)`` on every row block of ``weight`` (:func:`row_block` rows at a time),
    in order, with one scratch buffer reused for all blocks."""
    rows, cols = weight.shape
    block = row_block(weight)
    scratch = torch.empty(block * cols, dtype=weight.dtype, device=weight.device)
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        visit(r0, r1, scratch[:(r1 - r0) * cols].view(r1 - r0, cols))


@dataclass
class RankOneScale:
    """gamma = outer(out_scale, in_scale) for a Linear weight of shape (out, in), kept factored."""

    out_scale: Tensor
    in_scale: Tensor

    def to_dense(self) -> Tensor:
        return torch.outer(self.out_scale, self.in_scale)


def _describe(name: str, module: nn.Module) -> str:
    return f"module '{name or '<root>'}' ({type(module).__name__})"


def _check_module(name: str, module: nn.Module) -> None:
    if isinstance(module, _WEIGHTED):
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
            raise UnsupportedModuleError(f"{_describe(name, module)}: padding_mode={module.padding_mode!r} "
                                         "is not supported by path scales; use zero padding")
        return
    if isinstance(module, _PASS_THROUGH):
        return
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        if module.return_indices or any(d != 1 for d in _tuple(module.dilation)):
            raise UnsupportedModuleError(f"{_describe(name, module)}: dilation and return_indices are not supported")
        return
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)):
        divisor = getattr(module, "divisor_override", None)
        if divisor is not None or module.ceil_mode or (not module.count_include_pad and any(_tuple(module.padding))):
            raise UnsupportedModuleError(f"{_describe(name, module)}: only fixed-divisor average pooling "
                                         "(no divisor_override, no ceil_mode, count_include_pad with padding) is supported")
        return
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        mode = "training" if module.training else "evaluation"
        raise UnsupportedModuleError(
            f"{_describe(name, module)} in {mode} mode is not positively homogeneous (it shifts by the batch or "
            "running mean); path norms and Path-SGD need a network of Linear/Conv layers, ReLU, pooling and sums. "
            "Remove it, or fold it into the preceding layer for evaluation.")
    raise UnsupportedModuleError(
        f"{_describe(name, module)} is not positively homogeneous or not supported by path scales. Supported: "
        "Linear, Conv1d/2d, ReLU, Identity, Flatten, Dropout (off), Max/AvgPool1d/2d, AdaptiveAvgPool1d/2d, "
        "and sums/concatenations of such blocks.")


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _sum_pool(x: Tensor, dims: int, kernel, stride, padding, ceil_mode: bool, edge_weight: float) -> Tensor:
    """Sum over each pooling window (every edge on), times the powered fixed edge weight."""
    if dims == 1:
        k, s, pad = _tuple(kernel)[0], _tuple(stride)[0], _tuple(padding)[0]
        y = F.avg_pool2d(x.unsqueeze(-2), (1, k), (1, s), (0, pad), ceil_mode, True, divisor_override=1).squeeze(-2)
    else:
        y = F.avg_pool2d(x, kernel, stride, padding, ceil_mode, True, divisor_override=1)
    return y * edge_weight if edge_weight != 1.0 else y


def _pool_node_fn(module: nn.Module, p: float):
    """The squared-network replacement of a pooling module."""
    dims = 1 if isinstance(module, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)) else 2
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)):
        stride = module.stride if module.stride is not None else module.kernel_size
        is_max = isinstance(module, (nn.MaxPool1d, nn.MaxPool2d))
        kernel = _tuple(module.kernel_size) * (dims if len(_tuple(module.kernel_size)) == 1 else 1)
        weight = 1.0 if is_max else math.prod(kernel) ** (-p)
        ceil_mode = module.ceil_mode if is_max else False
        return lambda x: _sum_pool(x, dims, module.kernel_size, stride, module.padding, ceil_mode, weight)

    def adaptive(x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        size = _tuple(module.output_size)
        size = size * len(spatial) if len(size) == 1 else size
        out = tuple(o if o is not None else s for o, s in zip(size, spatial))
        if any(s % o for s, o in zip(spatial, out)):
            raise UnsupportedModuleError(f"{type(module).__name__}: input size {spatial} is not a multiple "
                                         f"of the output size {out}; windows of unequal size are not supported")
        kernel = tuple(s // o for s, o in zip(spatial, out))
        kernel_arg = kernel[0] if dims == 1 else kernel
        return _sum_pool(x, dims, kernel_arg, kernel_arg, 0, False, math.prod(kernel) ** (-p))

    return adaptive


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise UnsupportedModuleError(
            f"{type(model).__name__} could not be traced by torch.fx ({exc}); path scales need a model whose "
            "forward is a fixed graph of supported modules (no data-dependent control flow)") from exc


def _bypass(gm: fx.GraphModule, node: fx.Node) -> None:
    """Replace ``node`` by its first input (the squared network has no ReLU and no dropout: with
    nonnegative weights and inputs every unit is on, and relu'(0) = 0 would cut paths through
    units whose incoming weights are all zero)."""
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)


def _squared_graph(model: nn.Module, p: float) -> tuple[fx.GraphModule, list[nn.Linear] | None]:
    """Validate ``model`` and return (its squared-network GraphModule, the Linear chain if it is one)."""
    gm = _trace(model)
    modules = dict(gm.named_modules())
    chain: list[nn.Linear] | None = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = modules[node.target]
            _check_module(node.target, module)
            if isinstance(module, nn.Linear):
                if chain is not None:
                    chain.append(module)
            elif not isinstance(module, (nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)):
                chain = None
            if isinstance(module, _PASS_THROUGH) and not isinstance(module, nn.Flatten):
                _bypass(gm, node)  # ReLU is the identity on nonnegative inputs; dropout is off
                continue
            if isinstance(module, _POOLS):
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_function(_pool_node_fn(module, p), node.args, node.kwargs)
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
        elif node.op == "call_function":
            if node.target not in _FUNCTIONS:
                raise UnsupportedModuleError(
                    f"{getattr(node.target, '__name__', node.target)} called in the forward of {type(model).__name__} "
                    f"(node '{node.name}') is not positively homogeneous or not supported by path scales")
            if node.target in (operator.add, torch.add) and ("alpha" in node.kwargs or not all(
                    isinstance(a, fx.Node) for a in node.args)):
                raise UnsupportedModuleError(f"node '{node.name}': only sums of two tensors are supported "
                                             "(adding a constant is not positively homogeneous)")
            chain = None if node.target not in (torch.flatten, torch.relu, F.relu) else chain
            if node.target in (torch.relu, F.relu):
                _bypass(gm, node)
        elif node.op == "call_method":
            if node.target not in _METHODS:
                raise UnsupportedModuleError(f"Tensor.{node.target} in the forward of {type(model).__name__} "
                                             f"(node '{node.name}') is not supported by path scales")
            if node.target == "add":
                chain = None
            if node.target == "relu":
                _bypass(gm, node)
        elif node.op == "get_attr":
            raise UnsupportedModuleError(f"{type(model).__name__} uses the tensor attribute '{node.target}' "
                                         "directly in forward; wrap weights in nn.Linear/nn.Conv modules")
    gm.graph.lint()
    gm.recompile()
    if chain is not None and not chain:
        chain = None
    return gm, chain


def _infer_input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    if hasattr(model, "input_shape"):
        return tuple(model.input_shape)
    first = next((m for m in model.modules() if isinstance(m, _WEIGHTED)), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ValueError(f"path scales of {type(model).__name__} depend on the input size: pass input_shape=(C, H, W) "
                     "(or give the model an `input_shape` attribute)")


class PathScales:
    """The path-scale preconditioner of a positively homogeneous network.

    Built once (validates the model and traces its squared network); :meth:`compute` then
    recomputes the scales from the *current* weights every time it is called: nothing is
    accumulated across calls.

    Args:
        model: a network of Linear/Conv1d/Conv2d layers, ReLU, pooling, flatten, dropout (ignored)
            and residual sums or concatenations of such blocks.
        p: the exponent of the path norm (2 for Path-SGD).
        input_shape: per-example input shape; inferred from ``model.input_shape`` or a first
            Linear layer.
        factored: keep the scales of a plain Linear chain as rank-one factors (fast); False
            always uses the generic squared-network autograd pass (the reference).

    Raises:
        UnsupportedModuleError: naming the first module or operation that is not positively
            homogeneous (tanh, sigmoid, BatchNorm, LayerNorm, softmax, ...) or not supported.
    """

    def __init__(self, model: nn.Module, p: float = 2.0, input_shape: Sequence[int] | None = None,
                 factored: bool = True):
        if p <= 0:
            raise ValueError(f"path norm exponent p must be positive, got {p}")
        self.model = model
        self.p = float(p)
        self.input_shape = _infer_input_shape(model, input_shape)
        self._graph, chain = _squared_graph(model, self.p)
        self._names = {param: name for name, param in model.named_parameters()}
        self._chain = chain if factored and chain is not None and self._chain_is_consistent(chain) else None
        self._scratch: Tensor | None = None

    def _chain_is_consistent(self, chain: list[nn.Linear]) -> bool:
        widths = [math.prod(self.input_shape)] + [layer.out_features for layer in chain[:-1]]
        return all(layer.in_features == w for layer, w in zip(chain, widths))

    @property
    def factored(self) -> bool:
        """Whether the scales are kept as rank-one factors (a plain chain of Linear layers)."""
        return self._chain is not None

    def _powered(self, t: Tensor, out: Tensor | None = None) -> Tensor:
        if self.p == 2.0:
            return torch.mul(t, t, out=out) if out is not None else t * t
        res = torch.abs(t, out=out) if out is not None else t.abs()
        return res.pow_(self.p)

    @torch.no_grad()
    def compute(self, visitors: Mapping[str, BlockVisitor] | None = None) -> dict[str, Tensor | RankOneScale]:
        """gamma for every parameter, by name: dense tensors, or :class:`RankOneScale` for the
        weights of a Linear chain.

        Args:
            visitors: for a factored chain only: ``{weight name: visit(r0, r1, scratch)}``, each called once
                on every row block ``[r0, r1)`` of that weight right before the block is read, so a caller
                can change the weight (PathSGD's update) in the same pass over memory; the scales
                returned are those of the weights after the visits.
        """
        if self._chain is not None:
            return self._compute_chain(visitors or {})
        if visitors:
            raise ValueError("PathScales.compute: row-block visitors need the factored scales of a Linear chain; "
                             f"{type(self.model).__name__} is not one (see PathScales.factored)")
        return self._compute_graph()

    def dense(self) -> dict[str, Tensor]:
        """gamma for every parameter, by name, as tensors of the parameters' shapes."""
        return {k: v.to_dense() if isinstance(v, RankOneScale) else v for k, v in self.compute().items()}

    def _compute_graph(self) -> dict[str, Tensor]:
        params = dict(self.model.named_parameters())
        powered = {k: self._powered(v.detach()).requires_grad_(True) for k, v in params.items()}
        ref = next(iter(params.values()))
        ones = torch.ones((1, *self.input_shape), dtype=ref.dtype, device=ref.device)
        with torch.enable_grad():
            pi = functional_call(self._graph, powered, (ones,)).sum()
            grads = torch.autograd.grad(pi, list(powered.values()), allow_unused=True)
        return {k: g if g is not None else torch.zeros_like(powered[k]) for k, g in zip(powered, grads)}

    def _contract(self, weight: Tensor, vin: Tensor | None, vout: Tensor | None,
                  visit: BlockVisitor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """``(|W|^p @ vin, |W|^p^T @ vout)`` reading W once: row blocks small enough to stay in cache
        are powered into a scratch buffer (on CPU; one block on GPUs), so |W|^p is never stored.
        ``visit(r0, r1, scratch)``, when given, is called on each row block before it is read, with the
        scratch block it may use (PathSGD updates the block there, so the contraction sees the new weights
        while they are still in cache, and its temporary and the powered block share one buffer);
        ``visit.fused_contract`` (see :data:`BlockVisitor`) replaces the whole pass where it applies."""
        fused = getattr(visit, "fused_contract", None) if self.p == 2.0 else None
        done = fused(vin, vout) if fused is not None else None
        if done is not None:
            return done
        rows, cols = weight.shape
        block = row_block(weight)
        if self._scratch is None or self._scratch.numel() < block * cols or self._scratch.dtype != weight.dtype \
                or self._scratch.device != weight.device:
            self._scratch = torch.empty(block * cols, dtype=weight.dtype, device=weight.device)
        fwd = torch.empty(rows, dtype=weight.dtype, device=weight.device) if vin is not None else None
        bwd = torch.zeros(cols, dtype=weight.dtype, device=weight.device) if vout is not None else None
        for r0 in range(0, rows, block):
            r1 = min(rows, r0 + block)
            part = weight[r0:r1]
            scratch = self._scratch[:part.numel()].view_as(part)
            if visit is not None:
                visit(r0, r1, scratch)
            powered = self._powered(part, out=scratch)
            if fwd is not None:
                torch.mv(powered, vin, out=fwd[r0:r1])
            if bwd is not None:
                bwd.addmv_(powered.t(), vout[r0:r1])
        return fwd, bwd

    def _compute_chain(self, visitors: Mapping[str, BlockVisitor]) -> dict[str, Tensor | RankOneScale]:
        """gamma_in[l+1] = |W_l|^p gamma_in[l] + |b_l|^p (gamma_in[0] = 1) and
        gamma_out[l-1] = |W_l|^p^T gamma_out[l] (gamma_out[L-1] = 1); gamma(W_l) = gamma_out[l] (x) gamma_in[l].

        Sweeps forward below and backward above the largest inner layer m, which is then read once
        for both of its contractions; layers above m are read again forward, layers below m again
        backward (for a 3-layer MLP: every weight read exactly once). Each weight's visitor runs in
        its first read.
        """
        chain = self._chain
        assert chain is not None
        n = len(chain)
        weight = chain[0].weight
        gamma_in: list[Tensor | None] = [None] * n
        gamma_out: list[Tensor | None] = [None] * n
        gamma_in[0] = torch.ones(chain[0].in_features, dtype=weight.dtype, device=weight.device)
        gamma_out[n - 1] = torch.ones(chain[-1].out_features, dtype=weight.dtype, device=weight.device)
        pending = {i: visitors[self._names[layer.weight]] for i, layer in enumerate(chain)
                   if self._names[layer.weight] in visitors}

        def contract(i: int, vin: Tensor | None, vout: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
            return self._contract(chain[i].weight.detach(), vin, vout, pending.pop(i, None))

        def forward(i: int, fwd: Tensor) -> None:
            if chain[i].bias is not None:
                fwd += self._powered(chain[i].bias.detach())
            gamma_in[i + 1] = fwd

        def sweep_forward(layers: range) -> None:
            for i in layers:
                forward(i, contract(i, gamma_in[i], None)[0])

        def sweep_backward(layers: range) -> None:
            for i in layers:
                gamma_out[i - 1] = contract(i, None, gamma_out[i])[1]

        inner = range(1, n - 1)
        if len(inner):
            m = max(inner, key=lambda i: chain[i].weight.numel())
            sweep_forward(range(0, m))
            sweep_backward(range(n - 1, m, -1))
            fwd, bwd = contract(m, gamma_in[m], gamma_out[m])
            forward(m, fwd)
            gamma_out[m - 1] = bwd
            sweep_forward(range(m + 1, n - 1))
            sweep_backward(range(m - 1, 0, -1))
        else:
            sweep_forward(range(0, n - 1))
            sweep_backward(range(n - 1, 0, -1))
        for i, visit in pending.items():  # a one-layer chain reads no weight
            visit_rows(chain[i].weight, visit)
        scales: dict[str, Tensor | RankOneScale] = {}
        for i, layer in enumerate(chain):
            scales[self._names[layer.weight]] = RankOneScale(gamma_out[i], gamma_in[i])
            if layer.bias is not None:
                scales[self._names[layer.bias]] = gamma_out[i]
        return scales

    @torch.no_grad()
    def path_norm(self) -> Tensor:
        """(sum over paths of prod |w|^p) ** (1/p), a scalar tensor."""
        params = {k: self._powered(v.detach()) for k, v in self.model.named_parameters()}
        ref = next(iter(params.values()))
        ones = torch.ones((1, *self.input_shape), dtype=ref.dtype, device=ref.device)
        return functional_call(self._graph, params, (ones,)).sum() ** (1.0 / self.p)


def path_norm(model: nn.Module, p: float = 2.0, input_shape: Sequence[int] | None = None) -> Tensor:
    """The l_p path norm ``(sum_paths prod_e |w_e|^p)^(1/p)`` of a positively homogeneous network.

    Biases count as edges from an always-on unit. See :class:`PathScales` for what is supported.
    A NaN/inf parameter raises ``ValueError`` naming it.
    """
    check_finite_parameters(model, "path norm")
    return PathScales(model, p, input_shape).path_norm()


def path_scales(model: nn.Module, p: float = 2.0, input_shape: Sequence[int] | None = None) -> dict[str, Tensor]:
    """gamma_e = d pi_p / d(|w_e|^p) for every parameter, by name (same shapes as the parameters).

    For p = 2 this is the Path-SGD scale: the update is ``w <- w - lr * grad / gamma``.
    """
    check_finite_parameters(model, "path scales")
    return PathScales(model, p, input_shape).dense()
