r"""Hessian sharpness measures: the top eigenvalue and the trace of the training loss's Hessian, plain
and magnitude-normalized.

Keskar et al. (2017) relate flat minima (small Hessian eigenvalues) to generalization; Dinh et al.
(2017) showed that the plain spectrum is not invariant to reparametrizations that leave the function
unchanged (rescaling a ReLU layer by ``alpha`` and the next by ``1/alpha``). The normalized forms use
``D H D`` with ``D = diag(|theta|)``: under ``theta -> T theta`` with ``T`` diagonal (node or layer
rescaling) ``H -> T^-1 H T^-1``, so ``D H D`` is unchanged (the magnitude-aware normalization of
Jiang et al. 2020 / Tsuzuku et al. 2020, in its simplest diagonal form).

- ``hessian_top_eigenvalue`` = ``lambda_max(H)`` (Lanczos, relative residual ``<= tol``, checked by one more product);
- ``hessian_trace`` = ``tr(H)`` (Hutch++, stop rule of :func:`~geomopt.curvature.hutchinson_trace`);
- ``hessian_top_eigenvalue_normalized`` = ``lambda_max(D H D)``;
- ``hessian_trace_normalized`` = ``tr(D H D) = sum_i theta_i^2 H_ii``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomopt.checks import check_int, check_number
from geomopt.curvature import HessianOperator, ScaledOperator, hutchinson_trace, lanczos_top_eigenvalues

HESSIAN_MEASURES = ("hessian_top_eigenvalue", "hessian_trace", "hessian_top_eigenvalue_normalized",
                    "hessian_trace_normalized")


def hessian_measures(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *,
                     loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                     max_examples: int | None = None, eig_tol: float = 1e-3, trace_tol: float = 0.05,
                     max_probes: int = 300, deflate: int = 20, seed: int = 0) -> dict[str, Any]:
    """The four measures of the module docstring on the first ``max_examples`` training examples
    (all when None), plus the Hessian-vector products spent (``hessian_products``) and whether the
    estimates met their stop rules (``hessian_converged``; the traces within ``max_probes`` probes, by
    Hutch++ with ``deflate`` sign vectors, :func:`~geomopt.curvature.hutchinson_trace`)."""
    where = "hessian_measures"
    if max_examples is not None:
        check_int(where, "max_examples", max_examples, low=1)
    check_number(where, "eig_tol", eig_tol, low=0, low_open=True)
    check_number(where, "trace_tol", trace_tol, low=0, low_open=True)
    check_int(where, "max_probes", max_probes, low=1)
    check_int(where, "deflate", deflate, low=0)
    check_int(where, "seed", seed)
    H = HessianOperator(model, batches, loss_fn=loss_fn, max_examples=max_examples)
    D = ScaledOperator(H, H.theta.abs())
    out: dict[str, Any] = {}
    converged = True
    for suffix, op in (("", H), ("_normalized", D)):  # the same random draws for both forms
        eig = lanczos_top_eigenvalues(op, 1, tol=eig_tol, generator=torch.Generator().manual_seed(seed))
        trace = hutchinson_trace(op, tol=trace_tol, max_samples=max_probes, deflate=min(deflate, H.shape[0] // 2),
                                 generator=torch.Generator().manual_seed(seed + 1))
        out[f"hessian_top_eigenvalue{suffix}"] = float(eig.values[0])
        out[f"hessian_trace{suffix}"] = trace.estimate
        converged = converged and trace.converged and eig.converged
    out["hessian_products"] = H.products
    out["hessian_converged"] = converged
    return out
