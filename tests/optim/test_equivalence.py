"""PathSGD, KFAC and EKFAC, composed from a geometry and a step rule, give the parameters that the
monolithic classes before issue 27 gave: ``STEPS`` float64 steps for every option
(tests/optim/equivalence_cases.py; stored in equivalence.pt by the code before the restructuring).

Required: bit-identical (the restructuring moved code, not float operations). The stored run also
checks that each case exercises what it names (the factored EKFAC rotation, the fallback of unsupported
layers, the adaptive step's momentum)."""
from __future__ import annotations

import pytest
import torch

from tests.optim import equivalence_cases as cases

STORED = torch.load(cases.STORED, weights_only=True)


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_trajectory_is_bit_identical_to_the_code_before_the_split(name):
    torch.set_num_threads(1)
    assert STORED["steps"] == cases.STEPS
    params = cases.run(name)
    assert cases.compare(STORED["cases"][name], params) == 0.0


def test_the_comparison_can_fail():
    """A change in the last bit of one parameter is seen."""
    params = cases.run("kfac-plain")
    params[0] = params[0].clone()
    params[0].view(-1)[0] = torch.nextafter(params[0].view(-1)[0], torch.tensor(float("inf"), dtype=torch.float64))
    assert cases.compare(STORED["cases"]["kfac-plain"], params) > 0.0


def test_cases_exercise_their_options():
    built = cases.build("ekfac-factored")
    cases.run("ekfac-factored", built)
    assert built[1].factored_layers  # the rotation from the per-example quantities
    built = cases.build("kfac-fallback-groups")
    cases.run("kfac-fallback-groups", built)
    assert built[1].fallback_params and len(built[1].param_groups) == 2
    built = cases.build("kfac-adaptive-step")
    cases.run("kfac-adaptive-step", built)
    assert built[1].last_momentum != 0.0
    assert any("projections" in r for r in STORED["cases"]["path-sgd-wide"])  # a weight over one cache block
    moved = [cases.compare(STORED["cases"][name], [p.detach() for p in cases.build(name)[0].parameters()])
             for name in cases.CASES]
    assert min(moved) > 1e-6  # every case's parameters moved away from their initialization
