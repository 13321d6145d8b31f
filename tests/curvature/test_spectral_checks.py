"""The spectral tools and curvature operators never return a silently wrong number (issue 25): NaN/inf
in an operator's output, its weights or its data raise ``FloatingPointError`` naming it; invalid options
raise ``ValueError`` naming them; ``converged`` is claimed only after the true residual is checked."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomopt.curvature import (FisherOperator, GGNOperator, HessianOperator, hutchinson_diagonal, hutchinson_trace,
                               lanczos, lanczos_top_eigenvalues, power_iteration, slq_density)

pytestmark = pytest.mark.usefixtures("float64_default")

TOOLS = {
    "lanczos": lambda A: lanczos(A, 4),
    "lanczos_top_eigenvalues": lambda A: lanczos_top_eigenvalues(A, 2),
    "slq_density": lambda A: slq_density(A, steps=4, probes=2),
    "power_iteration": lambda A: power_iteration(A),
    "hutchinson_trace": lambda A: hutchinson_trace(A),
    "hutchinson_trace (Hutch++)": lambda A: hutchinson_trace(A, deflate=2),
    "hutchinson_diagonal": lambda A: hutchinson_diagonal(A),
}


def _symmetric(d: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed))
    return a + a.T


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_a_non_finite_operator_output_raises_naming_the_tool(tool, bad):
    A = _symmetric(12)
    A[3, 5] = A[5, 3] = bad
    name = tool.split(" ")[0]
    with pytest.raises(FloatingPointError, match=rf"^{name}: the operator's output at products? 1\b.*non-finite"):
        TOOLS[tool](A)


def test_a_nan_start_vector_raises():
    v0 = torch.ones(6)
    v0[2] = math.nan
    with pytest.raises(FloatingPointError, match="lanczos_top_eigenvalues: v0 is non-finite"):
        lanczos_top_eigenvalues(_symmetric(6), 1, v0=v0)
    with pytest.raises(ValueError, match="zero vector"):
        power_iteration(_symmetric(6), v0=torch.zeros(6))


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).eval()
    g = torch.Generator().manual_seed(seed)
    return model, torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g)


OPERATORS = [HessianOperator, GGNOperator, FisherOperator]


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("where, bad", [("parameter '3.weight'", math.nan), ("parameter '0.bias'", math.inf),
                                        ("buffer '1.running_var'", math.nan), ("the data's batch 0 x", math.nan),
                                        ("the data's batch 0 x", -math.inf)])
def test_operators_refuse_non_finite_weights_buffers_and_data(operator, where, bad):
    model, x, y = _model_and_data()
    named = {**{f"parameter '{n}'": p for n, p in model.named_parameters()},
             **{f"buffer '{n}'": b for n, b in model.named_buffers()}, "the data's batch 0 x": x}
    with torch.no_grad():
        named[where].view(-1)[1] = bad
    with pytest.raises(FloatingPointError, match=rf"^{operator.__name__}: {where} \(shape .*\) has 1 non-finite"):
        operator(model, (x, y))


def test_an_overflowing_forward_raises_at_the_first_product():
    """Finite weights and data whose float32 forward overflows: the products are NaN, the tools say so."""
    model = nn.Sequential(nn.Linear(3, 2)).float()
    with torch.no_grad():
        model[0].weight.fill_(1e30)
    op = GGNOperator(model, (torch.full((4, 3), 1e10, dtype=torch.float32), torch.tensor([0, 1, 0, 1])))
    with pytest.raises(FloatingPointError, match="lanczos_top_eigenvalues: the operator's output at product 1 is"):
        lanczos_top_eigenvalues(op, 1)
    with pytest.raises(FloatingPointError, match="hutchinson_trace: the operator's output at products 1-2 is"):
        hutchinson_trace(op, block=2)


BAD_COUNTS = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3),
                       st.none())
BAD_TOLS = st.one_of(st.floats(max_value=0), st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans(),
                     st.text(max_size=3), st.none())
OPTIONS = [  # (call with the option, option name, its kind)
    (lambda A, v: lanczos_top_eigenvalues(A, v), "k", BAD_COUNTS),
    (lambda A, v: lanczos_top_eigenvalues(A, 1, tol=v), "tol", BAD_TOLS),
    (lambda A, v: lanczos_top_eigenvalues(A, 2, max_steps=v if v is not None else 1), "max_steps", BAD_COUNTS),
    (lambda A, v: lanczos(A, v), "steps", BAD_COUNTS),
    (lambda A, v: power_iteration(A, tol=v), "tol", BAD_TOLS),
    (lambda A, v: power_iteration(A, max_iter=v), "max_iter", BAD_COUNTS),
    (lambda A, v: hutchinson_trace(A, tol=v), "tol", BAD_TOLS),
    (lambda A, v: hutchinson_trace(A, min_samples=v if v != 1 else 0), "min_samples", BAD_COUNTS),
    (lambda A, v: hutchinson_trace(A, block=v), "block", BAD_COUNTS),
    (lambda A, v: hutchinson_trace(A, deflate=v if v != 0 else -1), "deflate", BAD_COUNTS),
    (lambda A, v: hutchinson_diagonal(A, max_samples=v), "max_samples", BAD_COUNTS),
    (lambda A, v: slq_density(A, steps=v), "steps", BAD_COUNTS),
    (lambda A, v: slq_density(A, probes=v), "probes", BAD_COUNTS),
]


@settings(max_examples=60, deadline=None)
@given(case=st.integers(0, len(OPTIONS) - 1), data=st.data())
def test_invalid_options_raise_value_error_naming_the_option(case, data):
    call, name, values = OPTIONS[case]
    value = data.draw(values)
    with pytest.raises(ValueError, match=rf": {name}\b"):
        call(_symmetric(5), value)


def test_power_iteration_does_not_claim_convergence_when_the_rayleigh_quotient_stalls():
    """Top eigenvalues 10 and 9.99: the Rayleigh quotient changes by < 1e-6 relative per iteration long before
    it is within 1e-6 of 10 (the old stop rule called that converged); the residual rule does not."""
    lam = torch.cat([torch.tensor([10.0, 9.99]), torch.linspace(0, 1, 198)])
    res = power_iteration(torch.diag(lam), tol=1e-6, max_iter=300, generator=torch.Generator().manual_seed(0))
    v = res.vectors[:, 0]
    residual = float(torch.linalg.vector_norm(lam * v - res.values[0] * v))
    assert float(res.residuals[0]) == pytest.approx(residual, rel=1e-10)
    assert not res.converged and residual > 1e-6 * 10
    assert abs(float(res.values[0]) - 10.0) > 1e-6 * 10  # and indeed not within tol


def test_lanczos_restarts_at_an_invariant_subspace_instead_of_raising():
    """diag(10, 1, ..., 1): every Krylov space has dimension 2; the top 3 are 10, 1, 1."""
    lam = torch.cat([torch.tensor([10.0]), torch.ones(499)])
    res = lanczos_top_eigenvalues(torch.diag(lam), 3, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.products == 3 + 3
    torch.testing.assert_close(res.values, torch.tensor([10.0, 1.0, 1.0]), rtol=1e-12, atol=0)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(6, 60), k=st.integers(1, 3), steps=st.integers(3, 30), seed=st.integers(0, 10_000),
       tol=st.sampled_from([1e-2, 1e-6, 1e-10]))
def test_lanczos_residuals_are_true_and_converged_means_within_tol(d, k, steps, seed, tol):
    """Whatever the budget: ``residuals`` are ``||A u - theta u||``, and ``converged`` implies each value is
    within its residual (<= tol |theta| or the rounding floor) of a true eigenvalue."""
    k, steps = min(k, d), max(steps, k)
    lam = torch.randn(d, generator=torch.Generator().manual_seed(seed)).mul(3).sort(descending=True).values
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed + 1)))
    A = (q * lam) @ q.T
    res = lanczos_top_eigenvalues(A, k, tol=tol, max_steps=min(steps, d), generator=torch.Generator().manual_seed(seed))
    true = torch.linalg.vector_norm(A @ res.vectors - res.vectors * res.values, dim=0)
    torch.testing.assert_close(res.residuals, true, rtol=1e-6, atol=1e-12)
    if res.converged:
        floor = 16 * torch.finfo(torch.float64).eps * float(lam.abs().max())
        assert (true <= torch.clamp(tol * res.values.abs(), min=floor) * (1 + 1e-6)).all()
        nearest = (res.values[:, None] - lam[None, :]).abs().min(1).values
        assert (nearest <= true + 1e-12).all()


@pytest.mark.parametrize("bad", [-5, 0, 2.5, True])
def test_operators_refuse_a_max_examples_below_one(bad):
    """The old x[:max_examples] silently used all but 5 examples for max_examples=-5."""
    model, x, y = _model_and_data()
    with pytest.raises(ValueError, match=rf"max_examples must be an integer >= 1 \(or None for all\), got {bad!r}"):
        GGNOperator(model, (x, y), max_examples=bad)
    assert GGNOperator(model, (x, y), max_examples=3).num_examples == 3
