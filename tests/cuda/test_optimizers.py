"""Every optimizer on CUDA against the same steps on the CPU, in float64.

Reference: the CPU run of the same model, batches and hyperparameters (``tests.curvature.test_distributed``:
SGD with momentum, Path-SGD, K-FAC, EKFAC, K-FAC with the adaptive step, on an MLP and a CNN; Path-SGD on a
ReLU RNN; steepest descent in l1 / l2 / linf / spectral norms and mirror descent), which the CPU tests check
against dense matrices, finite differences and closed forms. Five steps on the GPU must give the same weights
to 1e-9 relative: the same arithmetic in another order (cuBLAS / cuSOLVER instead of MKL / LAPACK).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomopt.nn import ReLURNN
from geomopt.optim import MirrorDescent, PathSGD, SteepestDescent
from tests.curvature.test_distributed import MODELS, OPTIMIZERS, _train

pytestmark = pytest.mark.cuda


def assert_weights_close(got: list[torch.Tensor], reference: list[torch.Tensor], rtol: float = 1e-9) -> None:
    assert len(got) == len(reference)
    for p, q in zip(got, reference):
        assert p.device.type == "cpu" and p.dtype == q.dtype == torch.float64
        assert (p - q).abs().max() <= rtol * max(1.0, float(q.abs().max())), (p - q).abs().max()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_optimizer_steps_on_cuda_equal_cpu(cuda_device, model_name, opt_name):
    got, _, _ = _train(model_name, opt_name, device=str(cuda_device))
    reference, _, _ = _train(model_name, opt_name)
    assert_weights_close(got, reference)


def _rnn_path_sgd(device: str, include_kappa2: bool) -> list[torch.Tensor]:
    model = ReLURNN(3, 6, 2, init="orthogonal", seed=1, seq_len=5).double().to(device)
    opt = PathSGD(model, lr=0.05, momentum=0.9, include_kappa2=include_kappa2)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = torch.randn(8, 5, 3, generator=g, dtype=torch.float64).to(device)
        y = torch.randint(0, 2, (8,), generator=g).to(device)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize("include_kappa2", [False, True])
def test_path_sgd_relu_rnn_on_cuda_equals_cpu(cuda_device, include_kappa2):
    """The recurrent path scales (kappa1, and kappa2: paths through a recurrent weight twice) on the GPU."""
    assert_weights_close(_rnn_path_sgd(str(cuda_device), include_kappa2), _rnn_path_sgd("cpu", include_kappa2))


def _geometry_run(device: str, make) -> list[torch.Tensor]:
    """Five steps of least squares with a 10 -> 4 linear map (positive weights, for the entropy)."""
    torch.manual_seed(3)
    model = torch.nn.Linear(10, 4).double()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_().add_(0.1)
    model.to(device)
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(4)
    x, y = (torch.randn(16, d, generator=g, dtype=torch.float64).to(device) for d in (10, 4))
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize("make", [
    *(lambda ps, n=n, z=z: SteepestDescent(ps, lr=0.05, norm=n, normalized=z, momentum=0.9)
      for n in ("l1", "l2", "linf", "spectral") for z in (False, True)),
    *(lambda ps, k=k: MirrorDescent(ps, lr=0.05, momentum=0.5, **k)
      for k in ({"potential": "lp", "p": 3.0}, {"potential": "entropy"}, {"potential": "hypentropy", "beta": 0.5}))],
    ids=[*(f"steepest-{n}{'-normalized' if z else ''}" for n in ("l1", "l2", "linf", "spectral") for z in (False, True)),
         "mirror-lp3", "mirror-entropy", "mirror-hypentropy"])
def test_steepest_and_mirror_descent_on_cuda_equal_cpu(cuda_device, make):
    assert_weights_close(_geometry_run(str(cuda_device), make), _geometry_run("cpu", make))
