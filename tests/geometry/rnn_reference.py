"""Slow, obvious references for ReLU RNN path norms, used only by the tests.

Neyshabur, Wu, Salakhutdinov & Srebro 2016 (Sec. 3). The RNN unrolled for
T steps is a DAG whose edges are copies of shared weights; here every input->output path of the
unrolled net is enumerated explicitly as the list of (parameter name, index) occurrences it uses,
each time copy counted separately. Nothing here calls geomopt's scale code.

    pi      = sum_P prod_{occurrences} w^2
    kappa1_e = sum_P sum_{occurrences j of e} prod_{l != j} w_{p_l}^2
    kappa2_e = sum_P sum_{j != k occurrences of e} 2 w_{p_j} w_{p_k} prod_{l != j, k} w_{p_l}^2
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

Occurrence = tuple[str, tuple[int, ...]]


def unrolled_paths(rnn: nn.Module, T: int) -> list[list[Occurrence]]:
    """Every path of the RNN unrolled for T steps (outputs at T, or at every step if output_mode == 'all')."""
    n = rnn.recurrent.weight.shape[0]
    d_in, d_out = rnn.input.weight.shape[1], rnn.output.weight.shape[0]
    out_steps = range(1, T + 1) if rnn.output_mode == "all" else [T]
    paths: list[list[Occurrence]] = []
    for t_out in out_steps:
        for o in range(d_out):
            paths.append([("output.bias", (o,))])
        for s in range(1, t_out + 1):  # the step where the path enters the hidden layer
            for units in itertools.product(range(n), repeat=t_out - s + 1):
                middle = [("recurrent.weight", (units[k + 1], units[k])) for k in range(len(units) - 1)]
                for o in range(d_out):
                    tail = [("output.weight", (o, units[-1]))]
                    paths.append([("input.bias", (units[0],))] + middle + tail)
                    for k in range(d_in):
                        paths.append([("input.weight", (units[0], k))] + middle + tail)
    return paths


def brute_force(rnn: nn.Module, T: int) -> tuple[float, dict[str, Tensor], dict[str, Tensor]]:
    """``(pi, kappa1, kappa2)`` by enumeration, kappas as float64 tensors of the parameters' shapes."""
    params = {name: p.detach().double() for name, p in rnn.named_parameters()}
    k1 = {name: torch.zeros_like(p) for name, p in params.items()}
    k2 = {name: torch.zeros_like(p) for name, p in params.items()}
    pi = []
    for path in unrolled_paths(rnn, T):
        w = [float(params[name][idx]) for name, idx in path]
        sq = [x * x for x in w]
        pi.append(math.prod(sq))
        for j, (name, idx) in enumerate(path):
            k1[name][idx] += math.prod(sq[:j] + sq[j + 1:])
            for k, occ in enumerate(path):
                if k != j and occ == (name, idx):
                    rest = math.prod(s for l, s in enumerate(sq) if l not in (j, k))
                    k2[name][idx] += 2 * w[j] * w[k] * rest
    return math.fsum(pi), k1, k2


def squared_network_pi(rnn: nn.Module, T: int) -> float:
    """pi by running the model itself (its own forward pass) with squared weights on an all-ones input:
    every unit is on, so the summed output is the sum over paths. For finite differences."""
    import copy
    sq = copy.deepcopy(rnn).double()
    with torch.no_grad():
        for p in sq.parameters():
            p.mul_(p)
    x = torch.ones(1, T, sq.input_size, dtype=torch.float64)
    with torch.no_grad():
        return float(sq(x).sum())
