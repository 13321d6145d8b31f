"""The premise of implicit-mf's 2 x 2 gate, checked on exact gradient flow (scipy's ODE solvers, float64):
from the balanced init det W stays positive and the unobserved entry keeps growing; from the authors' Gaussian
init (unbalanced) the flow itself crosses det W = 0 while the loss is still at its start, and then heads for a
finite-norm solution (every exact fit has det W = -1)."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from geomopt.implicit.factorized import end_to_end, factor_grads, init_factors
from geomopt.implicit.lab import NormsVsRankConfig, norms_vs_rank_problem

CFG = NormsVsRankConfig()
OP, Y = norms_vs_rank_problem()


def start(init: str, seed: int) -> np.ndarray:
    """The lab's initial factors of one 2 x 2 run (det W(0) > 0, as run_norms_vs_rank makes it), flattened."""
    alpha = (CFG.init_std * math.sqrt(2)) ** CFG.depth
    factors = [f.clone() for f in init_factors((2, 2), CFG.depth, alphas=[alpha], seeds=[seed], init=init)]
    factors[0][:, :, 0] *= torch.sign(torch.linalg.det(end_to_end(factors)))[:, None]
    return torch.cat([f[0].flatten() for f in factors]).double().numpy()


def unpack(x: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(x[4 * j:4 * j + 4])).reshape(1, 2, 2) for j in range(CFG.depth)]


def residual(factors: list[torch.Tensor]) -> torch.Tensor:
    """``P_Omega(W) - b`` as a matrix: the gradient of the paper's loss 1/2 sum_Omega (W_ij - b_ij)^2 in W."""
    W = end_to_end(factors)[0]
    G = torch.zeros(2, 2, dtype=torch.float64)
    G[OP.rows, OP.cols] = W[OP.rows, OP.cols] - Y
    return G


def flow(t: float, x: np.ndarray) -> np.ndarray:
    factors = unpack(x)
    return -torch.cat([g.flatten() for g in factor_grads(factors, residual(factors)[None])]).numpy()


def loss(x: np.ndarray) -> float:
    return 0.5 * float((residual(unpack(x)) ** 2).sum())


def det(t: float, x: np.ndarray) -> float:
    return float(torch.linalg.det(end_to_end(unpack(x))[0]))


def invariants(x: np.ndarray) -> list[np.ndarray]:
    """``W_{j+1}^T W_{j+1} - W_j W_j^T``: constant along gradient flow (Arora et al. 2018; Du et al. 2018)."""
    w = [f[0].numpy() for f in unpack(x)]
    return [w[j + 1].T @ w[j + 1] - w[j] @ w[j].T for j in range(len(w) - 1)]


def solve(init: str, seed: int, until_loss: float = 1e-4):
    x0 = start(init, seed)
    reached = lambda t, x: loss(x) - until_loss  # noqa: E731
    reached.terminal = True
    sol = solve_ivp(flow, (0.0, 1e9), x0, method="LSODA", rtol=1e-11, atol=1e-14, events=[det, reached],
                    dense_output=True)
    assert sol.status == 1, sol.message  # stopped at the loss, not at the time limit
    return x0, sol


def test_flow_is_the_gradient_of_the_loss():
    x = start("gaussian", 0) * 50  # away from the origin, where the terms are not tiny
    eps, g = 1e-6, flow(0.0, x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = eps
        assert abs(-(loss(x + e) - loss(x - e)) / (2 * eps) - g[i]) < 1e-7 * max(1.0, abs(g[i]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_init_crosses_det_zero_along_exact_flow(seed):
    x0, sol = solve("gaussian", seed, until_loss=1e-6)
    assert det(0.0, x0) > 0
    crossings = sol.t_events[0]
    assert len(crossings) >= 1
    at_cross = sol.sol(crossings[0])
    assert loss(at_cross) > 0.9 * loss(x0)  # still at its start: not a late discretization artifact
    end = sol.y[:, -1]
    assert det(0.0, end) < -0.1  # heading for an exact fit, where det W = -1
    drift = max(np.abs(a - b).max() for a, b in zip(invariants(x0), invariants(end)))
    assert drift < 1e-9  # the solver followed the flow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_init_keeps_det_positive_and_the_entry_grows(seed):
    x0, sol = solve("balanced", seed)
    assert len(sol.t_events[0]) == 0 and det(0.0, sol.y[:, -1]) > 0
    w11 = abs(float(end_to_end(unpack(sol.y[:, -1]))[0, 0, 0]))
    assert w11 > 60  # the paper's ~60-70 at loss 1e-4
