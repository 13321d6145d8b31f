r"""The exact diagonal and the Kronecker factors of a Fisher / Gauss-Newton matrix from one capture.

With :class:`~geomopt.curvature.Capture` records of a supported layer (inputs ``a_nt``, output gradients
``g_nkt`` of ``K`` backward passes; :mod:`geomopt.curvature.capture`), the per-example gradients of
``[W | b]`` are ``M_nk = sum_t g_nkt a_nt^T`` and

    diag(F) = (1/N) sum_{n,k} M_nk^2        (elementwise, ``(d_out, d_in)``),

exact for the matrix the passes define: ``fisher='ggn'`` (one pass per column of the loss Hessian's
square root, ``H_n = sum_c s_c s_c^T``) gives the generalized Gauss-Newton diagonal
``diag((1/N) sum_n J_n^T H_n J_n)`` (LeCun et al. 1990, Optimal Brain Damage; BackPACK's
``DiagGGNExact``). One position per example: ``diag = sum_k (g_k^2)^T (a^2) / N`` (two matmuls);
otherwise (convolutions) the per-example gradients are formed in chunks by the layer's own rule.
The same records give the K-FAC factors ``A, G`` (:func:`~geomopt.curvature.kronecker_factors`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geomopt.curvature.capture import Capture
from geomopt.curvature.kronecker import CHUNK_ELEMENTS, _records, diagonal_from_rotated, kronecker_factors
from geomopt.curvature.layers import LayerHandler


def captured_exact_diagonal(capture: Capture, name: str) -> Tensor:
    """``(1/N) sum_{n,k} M_nk^2`` ``(d_out, d_in)`` of layer ``name`` recorded by ``capture``."""
    g = capture.output_grads(name)
    k, n, t, d_out = g.shape
    if t == 1:
        return diagonal_from_rotated(g, capture.inputs(name))
    first = capture.per_example_gradients(name, 0, 1)  # (K, 1, d_out, d_in)
    total = first.square().sum((0, 1))
    step = max(1, CHUNK_ELEMENTS // (k * total.numel()))
    for j in range(1, n, step):
        total += capture.per_example_gradients(name, j, j + step).square().sum((0, 1))
    return total.div_(n)


def gauss_newton_statistics(model: nn.Module, data, layers: list[tuple[str, nn.Module, LayerHandler]], *,
                            fisher: str = "ggn", likelihood: str = "categorical", kronecker: bool = False,
                            generator: torch.Generator | None = None, mc_samples: int = 1
                            ) -> dict[str, dict[str, Tensor]]:
    """Exact diagonal (and optionally K-FAC factors) of ``fisher`` for ``layers`` over ``data``.

    One forward and ``K`` backward passes per batch through one :class:`Capture`; batches are weighted
    by their sizes.

    Args:
        model: the network (its mode is left as it is).
        data: an ``(x, y)`` pair or an iterable of them.
        layers: ``(name, module, handler)`` triples (:func:`~geomopt.curvature.supported_layers`).
        fisher, likelihood, generator, mc_samples: as :func:`~geomopt.curvature.backprop_output_grads`.
        kronecker: also return ``"A"`` ``(d_in, d_in)`` and ``"G"`` ``(d_out, d_out)``.

    Returns:
        ``{name: {"diag": (d_out, d_in), ["A", "G"]}}`` in the combined ``[W | b]`` layout (split with
        the handler's ``from_matrix``).

    Raises:
        ValueError: no data.
    """
    device = next(model.parameters()).device
    out: dict[str, dict[str, Tensor]] = {}
    count = 0
    for capture in _records(model, data, layers, fisher=fisher, likelihood=likelihood, generator=generator,
                            mc_samples=mc_samples, device=device):
        n = capture.grad_shape(layers[0][0])[1]
        for name, _, _ in layers:
            stats = {"diag": captured_exact_diagonal(capture, name)}
            if kronecker:
                stats["A"], stats["G"] = kronecker_factors(*capture.get(name))
            if name in out:
                for key, value in stats.items():
                    out[name][key].add_(value, alpha=n)
            else:
                out[name] = {key: value.mul_(n) for key, value in stats.items()}
        count += n
    if count == 0:
        raise ValueError("gauss_newton_statistics: no data")
    return {name: {key: value.div_(count) for key, value in stats.items()} for name, stats in out.items()}
