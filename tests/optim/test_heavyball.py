"""Opt-in comparison with heavyball (skipped when it is not installed: ``pip install 'geomopt[peers]'``).

Where the algorithms agree, the steps agree: heavyball's ``Muon`` with its exact orthogonalization
(``zeroth_power_mode = "svd"``, used for square matrices), plain EMA momentum (``nesterov=False``) and its
``"scale"`` mode (``sqrt(max(1, rows / cols))``, torch's ``"original"``) takes our ``Muon(orthogonalize="svd",
nesterov=False)``'s steps, with and without decoupled weight decay, to float32 rounding.

What differs, and is not compared: heavyball's Newton-Schulz iteration (five per-step coefficient triples and
stochastic rounding to bfloat16) is not torch's quintic with fixed coefficients, and its Nesterov form adds the
EMA to the gradient (``g + B``) where torch's interpolates (``(1 - mu) g + mu B``); its SOAP skips the first
step's update, keeps the first moment in the eigenbasis, debiases the statistics' decay and refreshes the basis
by one power iteration with QR, and it has no plain Shampoo (only KL-Shampoo).
"""

import pytest
import torch

from geomopt.optim import Muon

heavyball = pytest.importorskip("heavyball")


@pytest.fixture
def eager_svd(monkeypatch):
    """heavyball without torch.compile (minutes on a CPU) and with the exact orthogonalization."""
    import heavyball.utils as hb_utils
    monkeypatch.setattr(hb_utils, "compile_mode", None)
    monkeypatch.setattr(hb_utils, "zeroth_power_mode", "svd")


@pytest.mark.usefixtures("eager_svd")
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_muon_steps_equal_heavyballs(momentum, weight_decay):
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(4, 4, generator=gen), torch.randn(6, 6, generator=gen)]
    ours, theirs = [w.clone().requires_grad_() for w in init], [w.clone().requires_grad_() for w in init]
    opt = Muon(ours, lr=0.02, momentum=momentum, nesterov=False, weight_decay=weight_decay, orthogonalize="svd")
    peer = heavyball.Muon(theirs, lr=0.02, betas=(momentum, 0.99), weight_decay=weight_decay, warmup_steps=0,
                          nesterov=False)
    for _ in range(4):
        for p, q in zip(ours, theirs):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        peer.step()
    for p, q in zip(ours, theirs):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
        assert not torch.equal(p, init[0] if p.shape == (4, 4) else init[1])
