r"""The weighted layers of a network, BatchNorm folding, and exact operator norms.

Norm-based measures need, for every weighted layer ``W_i`` (Linear, Conv1d, Conv2d) in forward
order: its weight tensor, the per-example shape of its input, its Frobenius norm and its
spectral norm *as a linear operator* on that input.

Conv spectral norm: the largest singular value of the map ``x -> conv(x, W)`` (bias dropped),
with the layer's padding and stride, on the actual input size. It is computed by power
iteration on ``A^T A`` where ``A^T`` is the exact adjoint obtained by ``torch.func.vjp`` of
the convolution (equivalently a ``conv_transpose`` with matching output padding), or, for
small operators, from the dense matrix. It is NOT the largest singular value of the kernel
reshaped to ``(C_out, C_in k)``: that number differs from the operator norm (a public-code
pitfall; see tests/measures/test_layers.py).

BatchNorm folding: in evaluation mode ``BN(z) = a * z + c`` with ``a = gamma / sqrt(var + eps)``,
``c = beta - a * mean``; after ``z = W x + b`` it gives ``(a W) x + (a b + c)``. A layer without
bias gets one. The preceding layer is found from the traced graph (forward order), not from
the order in which children were registered.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

# operators with at most this many matrix entries get their spectral norm from the dense matrix
DENSE_LIMIT = 1 << 22


class MeasureError(ValueError):
    """A measure cannot be applied to this model or these inputs."""


@dataclass
class LayerInfo:
    """One weighted layer, in forward order."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]   # per example, e.g. (C, H, W) or (d,)
    output_shape: tuple[int, ...]

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    @property
    def fan_out(self) -> int:
        """Number of output units of the layer's operator (channels x positions for a conv)."""
        n = 1
        for s in self.output_shape:
            n *= s
        return n


def _bn_folding(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise MeasureError(f"{type(bn).__name__} without running statistics (track_running_stats=False) cannot be "
                           "folded: its evaluation-mode output depends on the batch")
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    c = -a * bn.running_mean
    if bn.bias is not None:
        c = c + bn.bias
    return a.detach(), c.detach()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (evaluation mode) with every BatchNorm folded into the layer before it.

    The returned network computes the same function as ``model.eval()``; the BatchNorm modules
    are replaced by ``nn.Identity``. A model without BatchNorm is returned as an (eval) copy.

    Raises:
        MeasureError: a BatchNorm whose input is not the output of a Linear/Conv layer used
            only by it (e.g. BN after a ReLU or a sum), or one without running statistics; or a
            model that torch.fx cannot trace.
    """
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise MeasureError(f"{type(model).__name__} contains BatchNorm and could not be traced by torch.fx ({exc}); "
                           "folding needs a fixed forward graph") from exc
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            continue
        bn = modules[node.target]
        prev = node.args[0] if node.args else None
        layer = modules.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        if not isinstance(layer, WEIGHTED) or len(prev.users) != 1:
            what = f"'{prev.target}'" if isinstance(prev, fx.Node) else "its input"
            raise MeasureError(f"BatchNorm '{node.target}' cannot be folded: it follows {what}, not a Linear/Conv "
                               "layer whose output only it uses; measures needing homogeneity do not apply to this model")
        a, c = _bn_folding(bn)
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        layer.weight.mul_(a.view(shape))
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(a)
        new_bias = a * bias + c
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias)
        else:
            layer.bias.copy_(new_bias)
        setattr_path(gm, node.target, nn.Identity())
    gm.recompile()
    if hasattr(model, "input_shape"):
        gm.input_shape = model.input_shape
    return gm.eval()


def setattr_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, value)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def weighted_layers(model: nn.Module, example: Tensor) -> list[LayerInfo]:
    """Every Linear/Conv1d/Conv2d layer in the order of the forward pass on ``example`` (one
    batch), with its per-example input and output shapes. A layer called twice raises."""
    found: list[LayerInfo] = []
    seen: set[int] = set()
    names = {id(m): n for n, m in model.named_modules()}
    hooks = []

    def hook(module, inputs, output):
        if id(module) in seen:
            raise MeasureError(f"layer '{names[id(module)]}' is applied more than once in the forward pass; "
                               "layer-wise norm products need each weight used once")
        seen.add(id(module))
        found.append(LayerInfo(names[id(module)], module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

    for m in model.modules():
        if isinstance(m, WEIGHTED):
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding_mode != "zeros":
                raise MeasureError(f"conv layer '{names[id(m)]}' has padding_mode={m.padding_mode!r}; only zero "
                                   "padding is supported by the operator norm")
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not found:
        raise MeasureError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d layer: "
                           "norm-based measures do not apply")
    return found


def _conv_fn(module: nn.Module, weight: Tensor):
    if isinstance(module, nn.Conv2d):
        return lambda x: F.conv2d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)
    return lambda x: F.conv1d(x, weight, None, module.stride, module.padding, module.dilation, module.groups)


def operator_matrix(module: nn.Module, input_shape: Sequence[int], weight: Tensor | None = None) -> Tensor:
    """The dense matrix ``(out_numel, in_numel)`` of the layer's linear map (bias dropped) on
    inputs of per-example shape ``input_shape``: the map applied to the standard basis."""
    weight = module.weight if weight is None else weight
    if isinstance(module, nn.Linear):
        return weight.detach()
    n = 1
    for s in input_shape:
        n *= s
    basis = torch.eye(n, dtype=weight.dtype, device=weight.device).reshape(n, *input_shape)
    with torch.no_grad():
        out = _conv_fn(module, weight.detach())(basis)
    return out.reshape(n, -1).T


@torch.no_grad()
def spectral_norm(module: nn.Module, input_shape: Sequence[int], *, weight: Tensor | None = None,
                  method: str = "auto", iters: int = 500, tol: float = 1e-7, seed: int = 0) -> float:
    """Largest singular value of the layer's linear operator on inputs of shape ``input_shape``.

    Args:
        module: nn.Linear, nn.Conv1d or nn.Conv2d.
        input_shape: per-example input shape (``(C, H, W)`` or ``(C, L)`` for convs).
        weight: use this weight instead of ``module.weight`` (e.g. ``W - W0``).
        method: ``"dense"`` (SVD of the explicit operator matrix), ``"power"`` (power iteration
            on ``A^T A`` with the exact adjoint from ``vjp``), or ``"auto"`` (dense for Linear and for
            operators with at most ``DENSE_LIMIT`` entries, power iteration otherwise).
        iters, tol, seed: power-iteration budget, relative tolerance on sigma, start vector seed.
    """
    weight = (module.weight if weight is None else weight).detach()
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(weight, ord=2))
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        raise MeasureError(f"spectral_norm: unsupported layer {type(module).__name__}")
    n_in = 1
    for s in input_shape:
        n_in *= s
    conv = _conv_fn(module, weight)
    if method == "auto":
        with torch.no_grad():
            n_out = conv(torch.zeros(1, *input_shape, dtype=weight.dtype, device=weight.device)).numel()
        method = "dense" if n_in * n_out <= DENSE_LIMIT else "power"
    if method == "dense":
        return float(torch.linalg.matrix_norm(operator_matrix(module, input_shape, weight), ord=2))
    if method != "power":
        raise ValueError(f"spectral_norm method must be 'auto', 'dense' or 'power', got {method!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn((1, *input_shape), generator=g, dtype=weight.dtype).to(weight.device)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iters):
        u, pullback = vjp(conv, v)
        (w,) = pullback(u)  # A^T A v
        new = float(u.norm())
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
        if abs(new - sigma) <= tol * max(new, 1e-30):
            sigma = new
            break
        sigma = new
    # one last Rayleigh quotient with the converged vector: ||A v||
    with torch.no_grad():
        return float(conv(v).norm())
