"""Float32 at the sizes where sharpness is computed (issue 25): Lanczos and stochastic
Lanczos quadrature on diagonal operators of 10^6 and 10^7 entries with a known spectrum, and the top
eigenvalue of the GGN of a 975k-parameter MLP against a float64 reference from its dual matrix.

The old breakdown test ``beta <= d eps ||T||`` (``d eps > 1`` past 8.4M entries in float32) and float32
BLAS dot products of length ``d`` (off by ~1e-3 relative at 10^7) returned wrong values as converged."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from geomopt.curvature import GGNOperator, lanczos_top_eigenvalues, slq_density

EPS32 = torch.finfo(torch.float32).eps


class Diagonal:
    """``diag(lam)`` as an operator: a product is one elementwise multiplication (cheap at 10^7)."""

    def __init__(self, lam: torch.Tensor):
        self.lam, self.shape, self.dtype, self.device = lam, (len(lam), len(lam)), lam.dtype, lam.device

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.lam * v


def _spectrum(d: int, top: tuple[float, ...]) -> torch.Tensor:
    """float32 ``(d,)``: the eigenvalues ``top`` then uniform in [0, 1) (a gap below the top)."""
    lam = torch.rand(d, generator=torch.Generator().manual_seed(0))
    lam[:len(top)] = torch.tensor(top)
    return lam


def _true_residuals(lam: torch.Tensor, res) -> torch.Tensor:
    v = res.vectors.double()
    return torch.linalg.vector_norm(lam.double()[:, None] * v - v * res.values, dim=0)


@pytest.mark.parametrize("d, top", [(1_000_000, (10.0, 9.0, 8.0)), (10_000_000, (10.0,))])
def test_lanczos_float32_diagonal_at_scale(d, top):
    lam = _spectrum(d, top)
    res = lanczos_top_eigenvalues(Diagonal(lam), len(top), tol=1e-5, generator=torch.Generator().manual_seed(1))
    truth = torch.tensor(top, dtype=torch.float64)
    assert res.converged
    torch.testing.assert_close(res.values, truth, rtol=1e-5, atol=0)
    true = _true_residuals(lam, res)  # the reported residuals are the true ones, and bound the error
    assert (res.residuals - true).abs().max() <= 1e-2 * true.max() + 16 * EPS32 * 10
    assert ((res.values - truth).abs() <= res.residuals + 16 * EPS32 * 10).all()


def test_slq_float32_diagonal_at_1m_finds_the_top_and_the_moments():
    lam = _spectrum(1_000_000, (10.0,))
    dens = slq_density(Diagonal(lam), steps=15, probes=2, generator=torch.Generator().manual_seed(1))
    assert dens.nodes.shape == (2, 15) and dens.products == 30  # no (false) breakdown
    torch.testing.assert_close(dens.weights.sum(1), torch.ones(2, dtype=torch.float64))
    assert float(dens.nodes.max()) == pytest.approx(10.0, rel=1e-4)
    for k in (1, 2):  # v^T A^k v / |v|^2 has standard deviation std(lam^k) sqrt(2 / d); 2 probes
        exact = float((lam.double() ** k).mean())
        assert abs(dens.moment(k) - exact) <= 4 * float((lam.double() ** k).std()) * (2 / len(lam)) ** 0.5


def _ggn_top_float64(model: nn.Module, x: torch.Tensor) -> float:
    """The top eigenvalue of the mean cross-entropy's GGN ``G = (1/N) sum_n J_n^T H_n J_n`` in float64 from
    its dual: ``G = K^T K`` with ``K = R J / sqrt(N)``, ``R = blockdiag(H_n^{1/2})``, has the nonzero
    eigenvalues of ``K K^T = R (J J^T) R / N`` (``NC x NC``); ``J J^T`` column by column, ``J (J^T e_r)``."""
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    x = x.double()
    f = lambda p: functional_call(model, p, (x,))  # noqa: E731
    out, pull = vjp(f, params)
    n, c = out.shape
    p = out.softmax(-1)
    e, U = torch.linalg.eigh(torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    R = torch.block_diag(*(U * e.clamp(min=0).sqrt()[:, None, :]) @ U.transpose(1, 2))
    ntk = torch.stack([jvp(f, (params,), (pull(col.view(n, c))[0],))[1].reshape(-1)
                       for col in torch.eye(n * c, dtype=torch.float64)], dim=1)
    return float(torch.linalg.eigvalsh(R @ ntk @ R / n)[-1])


def test_ggn_top_eigenvalue_of_a_975k_parameter_mlp_in_float32_matches_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 1000), nn.ReLU(), nn.Linear(1000, 900), nn.ReLU(), nn.Linear(900, 10))
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    op = GGNOperator(model, (x, y))
    assert op.shape[0] == 974_910
    res = lanczos_top_eigenvalues(op, 1, tol=1e-4, generator=torch.Generator().manual_seed(0))
    truth = _ggn_top_float64(model, x)
    assert res.converged and float(res.residuals[0]) <= 1e-4 * truth
    assert float(res.values[0]) == pytest.approx(truth, rel=1e-4)
