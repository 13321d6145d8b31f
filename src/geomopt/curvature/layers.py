r"""The one registry of layers that Kronecker-factored curvature supports.

A supported layer ``s = W a`` (per position ``t``: a linear layer has one position per example and
per leading index; a 2-d convolution has one per output pixel) is described to the curvature code by
a :class:`LayerHandler`, which turns

- the module's input ``x`` into the *expanded inputs* ``a`` of shape ``(N, T, d_in)``, with a column
  of ones appended when the layer has a bias (KFC patches for convolutions, Grosse & Martens 2016),
- the gradient with respect to the module's output into ``g`` of shape ``(N, T, d_out)``,
- the parameters' gradients into one matrix ``[W | b]`` of shape ``(d_out, d_in)``, and back,
- the input and output gradients into per-example gradients ``M_n`` (generic: from ``a`` and ``g``;
  convolutions: one grouped weight-gradient convolution, without patches).

With these, the per-example gradient of the combined matrix is ``M_n = sum_t g_nt a_nt^T``.

Adding a layer type = one :class:`LayerHandler` subclass + one :func:`register_layer` call.
``layer_handler(module)`` returns the handler or ``None`` (with the reason in
:func:`unsupported_reason`) for layers that are not supported, such as grouped convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def per_example_gradients(a: Tensor, g: Tensor) -> Tensor:
    """``M_nk = sum_t g_nkt a_nt^T``: ``(K, N, d_out, d_in)`` (memory ``K N d_out d_in``) from ``a``
    ``(N, T, d_in)`` and ``g`` ``(K, N, T, d_out)``."""
    return torch.einsum("knto,nti->knoi", g, a)


class LayerHandler:
    """How one layer type maps to ``(a, g, [W | b])``; see the module docstring."""

    def unsupported(self, module: nn.Module) -> str | None:
        """Why this instance cannot be handled (``None`` if it can)."""
        return None

    def batched(self, module: nn.Module, t: Tensor) -> Tensor:
        """The module's input or output gradient with a leading batch dimension (unbatched calls get N = 1)."""
        return t

    def inputs(self, module: nn.Module, x: Tensor) -> Tensor:
        """Expanded inputs ``(N, T, d_in)`` (ones column last when the layer has a bias) of a batched input."""
        raise NotImplementedError

    def per_example_gradients(self, module: nn.Module, x: Tensor, grad_outputs: Tensor) -> Tensor:
        """``M_nk = sum_t g_nkt a_nt^T`` ``(K, N, d_out, d_in)`` from the batched input and the output
        gradients of ``K`` backward passes stacked, ``(K, N, ...)``."""
        g = torch.stack([self.output_grads(module, go) for go in grad_outputs])
        return per_example_gradients(self.inputs(module, x), g)

    def output_grads(self, module: nn.Module, grad_output: Tensor) -> Tensor:
        """Output gradients ``(N, T, d_out)``."""
        raise NotImplementedError

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        """The parameters the Kronecker block covers: ``[weight]`` or ``[weight, bias]``."""
        return [module.weight] + ([module.bias] if module.bias is not None else [])

    def shape(self, module: nn.Module) -> tuple[int, int]:
        """``(d_out, d_in)`` of the combined matrix ``[W | b]``."""
        w = module.weight
        return w.shape[0], w[0].numel() + (module.bias is not None)

    def to_matrix(self, module: nn.Module, tensors: list[Tensor]) -> Tensor:
        """Combine tensors shaped like :meth:`params` (e.g. gradients) into ``(d_out, d_in)``."""
        w = tensors[0].reshape(tensors[0].shape[0], -1)
        if len(tensors) == 1:
            return w
        return torch.cat([w, tensors[1].reshape(-1, 1)], dim=1)

    def from_matrix(self, module: nn.Module, matrix: Tensor) -> list[Tensor]:
        """Split ``(d_out, d_in)`` into tensors shaped like :meth:`params`."""
        w = module.weight
        if module.bias is None:
            return [matrix.reshape(w.shape)]
        return [matrix[:, :-1].reshape(w.shape), matrix[:, -1].reshape(module.bias.shape)]


def _append_ones(a: Tensor) -> Tensor:
    return torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)


class LinearHandler(LayerHandler):
    """``nn.Linear``: inputs ``(N, *, d_in)``; the ``*`` dimensions become positions ``T``."""

    def batched(self, module: nn.Linear, t: Tensor) -> Tensor:
        return t if t.dim() > 1 else t.unsqueeze(0)

    def inputs(self, module: nn.Linear, x: Tensor) -> Tensor:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
        return _append_ones(a) if module.bias is not None else a

    def output_grads(self, module: nn.Linear, grad_output: Tensor) -> Tensor:
        return grad_output.reshape(grad_output.shape[0], -1, grad_output.shape[-1])


class Conv2dHandler(LayerHandler):
    """``nn.Conv2d`` (groups=1, zero padding): KFC patches ``(N, H_out W_out, C_in k_h k_w [+1])``."""

    def unsupported(self, module: nn.Conv2d) -> str | None:
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros')"
        if isinstance(module.padding, str) and module.padding == "same":
            if any((d * (k - 1)) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                return "padding='same' with an even effective kernel size"
        return None

    def _padding(self, module: nn.Conv2d) -> tuple[int, int]:
        if isinstance(module.padding, str):
            if module.padding == "valid":
                return (0, 0)
            return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        return tuple(module.padding)

    def batched(self, module: nn.Conv2d, t: Tensor) -> Tensor:
        return t if t.dim() == 4 else t.unsqueeze(0)

    def inputs(self, module: nn.Conv2d, x: Tensor) -> Tensor:
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=self._padding(module),
                           stride=module.stride)  # (N, C k_h k_w, L)
        if module.bias is not None:  # ones appended as a row of (N, d_in, L): a plain copy, no transposition
            patches = torch.cat([patches, patches.new_ones(patches.shape[0], 1, patches.shape[2])], dim=1)
        return patches.transpose(1, 2)  # a (N, L, d_in) view, as the gradients (N, L, C_out) below

    def output_grads(self, module: nn.Conv2d, grad_output: Tensor) -> Tensor:
        return grad_output.flatten(2).transpose(1, 2)  # (N, H_out W_out, C_out)

    def per_example_gradients(self, module: nn.Conv2d, x: Tensor, grad_outputs: Tensor) -> Tensor:
        """The weight gradients of every example and pass at once: one convolution with ``groups = N``,
        the examples stacked as channels and each example's ``K C_out`` output-gradient channels as its
        group's outputs (the patches are never formed); bias column ``sum_t g_nkt``."""
        k, n, c_out = grad_outputs.shape[:3]
        go = grad_outputs.transpose(0, 1).reshape(1, n * k * c_out, *grad_outputs.shape[3:])  # (n, k, c) order
        w = torch.nn.grad.conv2d_weight(x.reshape(1, -1, *x.shape[2:]), (n * k * c_out, *module.weight.shape[1:]), go,
                                        stride=module.stride, padding=self._padding(module), dilation=module.dilation,
                                        groups=n)
        w = w.reshape(n, k, c_out, -1).transpose(0, 1)  # (K, N, C_out, C_in k_h k_w)
        if module.bias is None:
            return w
        return torch.cat([w, grad_outputs.sum((3, 4)).unsqueeze(-1)], dim=-1)


SUPPORTED_LAYERS: dict[type[nn.Module], LayerHandler] = {}


def register_layer(cls: type[nn.Module], handler: LayerHandler) -> None:
    """Declare ``handler`` for modules of type ``cls`` (exact type or subclasses)."""
    SUPPORTED_LAYERS[cls] = handler


register_layer(nn.Linear, LinearHandler())
register_layer(nn.Conv2d, Conv2dHandler())


def _lookup(module: nn.Module) -> LayerHandler | None:
    for cls in type(module).__mro__:
        if cls in SUPPORTED_LAYERS:
            return SUPPORTED_LAYERS[cls]
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """``None`` if ``module`` is supported, else why not (type not registered, or an option)."""
    handler = _lookup(module)
    if handler is None:
        return f"{type(module).__name__} is not in the registry of supported layers ({names_of_supported()})"
    return handler.unsupported(module)


def layer_handler(module: nn.Module) -> LayerHandler | None:
    """The handler of ``module``, or ``None`` if its type or options are not supported."""
    handler = _lookup(module)
    if handler is None or handler.unsupported(module) is not None:
        return None
    return handler


def names_of_supported() -> str:
    return ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)


def supported_layers(model: nn.Module, include: Callable[[nn.Module], bool] | None = None
                     ) -> list[tuple[str, nn.Module, LayerHandler]]:
    """``(name, module, handler)`` for every supported layer of ``model``, in module order."""
    out = []
    for name, module in model.named_modules():
        handler = layer_handler(module)
        if handler is not None and (include is None or include(module)):
            out.append((name or type(module).__name__, module, handler))
    return out
