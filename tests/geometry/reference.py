"""Slow, obvious reference implementations of path norms, used only by the tests.

Neyshabur, Salakhutdinov & Srebro, "Path-SGD", NeurIPS 2015 (Sec. 2):

    pi_p(w)  = sum over input->output paths P of prod_{e in P} |w_e|^p
    gamma_e  = sum over paths P through e of prod_{e' in P, e' != e} |w_e'|^p

Biases are edges from an always-on unit, so a path may start at a bias. Nothing here calls
geomopt: the MLP reference enumerates every path explicitly; the chain reference builds each
layer's dense linear operator (convolutions applied to basis vectors, pooling windows written
out index by index) and multiplies the entrywise-powered matrices.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# An edge is identified by (layer index, "weight" or "bias", index tuple into that tensor).
Edge = tuple[int, str, tuple[int, ...]]


def mlp_paths(layers: Sequence[tuple[Tensor, Tensor | None]]) -> list[list[Edge]]:
    """Every input->output path of a Linear chain, as the list of edges it uses.

    Args:
        layers: ``[(W_1, b_1), ..., (W_L, b_L)]``, ``W_l`` of shape ``(n_l, n_{l-1})``, ``b_l`` of
            shape ``(n_l,)`` or ``None``. Layer l maps the units of level l-1 to level l.

    Returns:
        The paths: those starting at an input unit (one unit per level 0..L) and, for every layer
        l with a bias, those starting at l's always-on bias unit (one unit per level l..L).
    """
    widths = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    depth = len(layers)
    paths: list[list[Edge]] = []
    # Paths from an input unit: choose one unit per level 0..L.
    for units in itertools.product(*(range(n) for n in widths)):
        paths.append([(l, "weight", (units[l + 1], units[l])) for l in range(depth)])
    # Paths from the bias unit of layer l: bias edge into unit u_l, then weights to the output.
    for start, (_, bias) in enumerate(layers):
        if bias is None:
            continue
        for units in itertools.product(*(range(n) for n in widths[start + 1:])):
            edges: list[Edge] = [(start, "bias", (units[0],))]
            for k, l in enumerate(range(start + 1, depth)):
                edges.append((l, "weight", (units[k + 1], units[k])))
            paths.append(edges)
    return paths


def _edge_values(layers: Sequence[tuple[Tensor, Tensor | None]], p: float) -> dict[Edge, float]:
    values: dict[Edge, float] = {}
    for l, (weight, bias) in enumerate(layers):
        for idx in itertools.product(*(range(s) for s in weight.shape)):
            values[(l, "weight", idx)] = abs(float(weight[idx])) ** p
        if bias is not None:
            for i in range(bias.shape[0]):
                values[(l, "bias", (i,))] = abs(float(bias[i])) ** p
    return values


def brute_force_pi(layers: Sequence[tuple[Tensor, Tensor | None]], p: float = 2.0) -> float:
    """pi_p = sum over enumerated paths of prod |w_e|^p (see :func:`mlp_paths`)."""
    values = _edge_values(layers, p)
    return math.fsum(math.prod(values[e] for e in path) for path in mlp_paths(layers))


def brute_force_gamma(layers: Sequence[tuple[Tensor, Tensor | None]],
                      p: float = 2.0) -> list[tuple[Tensor, Tensor | None]]:
    """gamma_e = sum over enumerated paths through e of the product of the other edges' |w|^p.

    Returns ``[(gamma_W_1, gamma_b_1), ...]`` with the parameters' shapes and dtypes (``None``
    where a layer has no bias). The product over the other edges is taken explicitly (no
    division), so zero weights are handled exactly.
    """
    values = _edge_values(layers, p)
    sums: dict[Edge, list[float]] = defaultdict(list)
    for path in mlp_paths(layers):
        for e in path:
            sums[e].append(math.prod(values[o] for o in path if o != e))
    out: list[tuple[Tensor, Tensor | None]] = []
    for l, (weight, bias) in enumerate(layers):
        gw = torch.zeros_like(weight)
        for idx in itertools.product(*(range(s) for s in weight.shape)):
            gw[idx] = math.fsum(sums.get((l, "weight", idx), []))
        gb = None
        if bias is not None:
            gb = torch.zeros_like(bias)
            for i in range(bias.shape[0]):
                gb[i] = math.fsum(sums.get((l, "bias", (i,)), []))
        out.append((gw, gb))
    return out


# ---------------------------------------------------------------------------------------------
# Dense-operator reference for chains with convolutions and pooling.
# ---------------------------------------------------------------------------------------------


def _pool_matrix_1d(length: int, kernel: int, stride: int, padding: int, weight: float) -> Tensor:
    """(out, length) matrix with ``weight`` at [o, i] when input i lies in window o (padding: no edge)."""
    out_len = (length + 2 * padding - kernel) // stride + 1
    m = torch.zeros(out_len, length, dtype=torch.float64)
    for o in range(out_len):
        for t in range(kernel):
            i = o * stride - padding + t
            if 0 <= i < length:
                m[o, i] = weight
    return m


def _pair(v, dims: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims


def _pool_operator(module: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """Dense fixed-edge matrix of a max/avg pooling module on a (C, *spatial) input.

    Max pooling: every window element is an edge of weight 1 (all paths on). Average pooling:
    weight 1/window_size (count_include_pad: the divisor is the full kernel size). Adaptive
    average pooling only where the input size is a multiple of the output size.
    """
    channels, spatial = shape[0], shape[1:]
    dims = len(spatial)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        out = tuple(o if o is not None else n for o, n in zip(_pair(module.output_size, dims), spatial))
        assert all(n % o == 0 for n, o in zip(spatial, out)), "reference: unequal adaptive windows"
        kernel = stride = tuple(n // o for n, o in zip(spatial, out))
        padding = (0,) * dims
        is_avg = True
    else:
        kernel = _pair(module.kernel_size, dims)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size, dims)
        padding = _pair(module.padding, dims)
        is_avg = isinstance(module, (nn.AvgPool1d, nn.AvgPool2d))
        assert not module.ceil_mode, "reference: ceil_mode is not modelled"
        assert not is_avg or module.count_include_pad, "reference: divisor is the full kernel size"
    mats = [_pool_matrix_1d(n, k, s, pd, 1.0 / k if is_avg else 1.0)
            for n, k, s, pd in zip(spatial, kernel, stride, padding)]
    spatial_op = mats[0]
    for m in mats[1:]:
        spatial_op = torch.kron(spatial_op, m)  # row-major (H, W) flattening
    op = torch.kron(torch.eye(channels, dtype=torch.float64), spatial_op)
    out_shape = (channels, *(m.shape[0] for m in mats))
    return op, out_shape


def _conv_operator(module: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None, tuple[int, ...]]:
    """Dense (out_dim, in_dim) matrix of a convolution without bias, from basis vectors, and its
    bias expanded to one edge per output position."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    with torch.no_grad():
        out = conv(basis, module.weight.detach().double(), None, module.stride, module.padding,
                   module.dilation, module.groups)
    out_shape = tuple(out.shape[1:])
    op = out.reshape(n, -1).t().contiguous()
    bias = None
    if module.bias is not None:
        positions = math.prod(out_shape[1:])
        bias = module.bias.detach().double().repeat_interleave(positions)
    return op, bias, out_shape


def dense_chain_pi(modules: Sequence[nn.Module], input_shape: Sequence[int], p: float = 2.0) -> float:
    """pi_p of a feedforward chain by dense powered operators.

    With v_0 = 1 (one entry per input unit), ``v_l = |M_l|^p v_{l-1} + |b_l|^p`` for a weighted
    layer and ``v_l = P_l^p v_{l-1}`` for a pooling layer; pi_p = 1^T v_L. Entry i of v_l is the
    sum over paths ending at unit i of level l of prod |w|^p (paths from inputs and biases).
    ReLU, Flatten, Identity and Dropout are the identity on paths.
    """
    shape = tuple(input_shape)
    v = torch.ones(math.prod(shape), dtype=torch.float64)
    for module in modules:
        if isinstance(module, (nn.ReLU, nn.Identity, nn.Dropout)):
            continue
        if isinstance(module, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(module, nn.Linear):
            v = module.weight.detach().double().abs().pow(p) @ v
            if module.bias is not None:
                v = v + module.bias.detach().double().abs().pow(p)
            shape = (module.out_features,)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            op, bias, shape = _conv_operator(module, shape)
            v = op.abs().pow(p) @ v
            if bias is not None:
                v = v + bias.abs().pow(p)
        elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            op, shape = _pool_operator(module, shape)
            v = op.pow(p) @ v
        else:
            raise TypeError(f"dense_chain_pi: no reference for {type(module).__name__}")
    return float(v.sum())
