"""Spectral measures of a (batch of) matrices: nuclear norm, effective rank, distances.

Effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
EUSIPCO 2007): with singular values ``sigma_1..sigma_k`` and ``p_i = sigma_i / sum_j sigma_j``,
``erank = exp(H(p))``, ``H(p) = -sum_i p_i log p_i`` (``0 log 0 = 0``). It equals k for k equal
non-zero singular values and lies in ``[1, rank]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomopt.checks import check_number, check_tensor


def _check_matrix(name: str, X: Tensor, key: str = "X") -> None:
    """A matrix or a batch of matrices ``(..., n1, n2)`` with entries, all finite."""
    check_tensor(name, key, X, min_ndim=2)


def singular_values(X: Tensor) -> Tensor:
    """``(..., n1, n2) -> (..., min(n1, n2))``, descending."""
    _check_matrix("singular_values", X)
    return torch.linalg.svdvals(X)


def nuclear_norm(X: Tensor) -> Tensor:
    """Sum of singular values, ``(..., n1, n2) -> (...)``."""
    _check_matrix("nuclear_norm", X)
    return singular_values(X).sum(-1)


def effective_rank_from_sv(sv: Tensor, eps: float = 0.0) -> Tensor:
    """Roy & Vetterli's effective rank from singular values ``(..., k)``; 0 for the zero matrix."""
    check_tensor("effective_rank_from_sv", "sv", sv, min_ndim=1)
    check_number("effective_rank_from_sv", "eps", eps, low=0)
    sv = sv.clamp(min=0)
    total = sv.sum(-1, keepdim=True)
    p = sv / total.clamp(min=torch.finfo(sv.dtype).tiny)
    ent = -torch.where(p > eps, p * torch.log(p.clamp(min=torch.finfo(sv.dtype).tiny)), torch.zeros_like(p)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(ent), torch.zeros_like(ent))


def effective_rank(X: Tensor) -> Tensor:
    """Roy & Vetterli's effective rank of ``(..., n1, n2)`` matrices, ``-> (...)``."""
    _check_matrix("effective_rank", X)
    return effective_rank_from_sv(singular_values(X))


def relative_distance(X: Tensor, ref: Tensor) -> Tensor:
    """``||X - ref||_F / ||ref||_F`` over the last two dimensions (``ref`` broadcasts)."""
    _check_matrix("relative_distance", X)
    _check_matrix("relative_distance", ref, "ref")
    return torch.linalg.matrix_norm(X - ref) / torch.linalg.matrix_norm(ref).clamp(min=torch.finfo(X.dtype).tiny)


def psd_power(M: Tensor, p: float) -> Tensor:
    """``M^p`` of symmetric PSD matrices ``(..., n, n)`` by eigendecomposition (eigenvalues below
    ``n * eps * max eigenvalue`` -> 0).

    ``p = 0`` returns the identity (the convention ``(W W^T)^0 = I`` of the end-to-end dynamics).
    """
    _check_matrix("psd_power", M, "M")
    check_number("psd_power", "p", p)
    if M.shape[-1] != M.shape[-2]:
        raise ValueError(f"psd_power: M must be square (..., n, n), got shape {tuple(M.shape)}")
    if p == 0:
        return torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M).clone()
    evals, evecs = torch.linalg.eigh((M + M.transpose(-1, -2)) / 2)
    # eigenvalues at rounding level are zeros of a rank-deficient M: (1e-16)^(1/3) would not be negligible
    cut = M.shape[-1] * torch.finfo(M.dtype).eps * evals.abs().amax(-1, keepdim=True)
    evals = torch.where(evals > cut, evals, torch.zeros_like(evals)) ** p
    return (evecs * evals.unsqueeze(-2)) @ evecs.transpose(-1, -2)
