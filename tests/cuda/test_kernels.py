"""The C kernels are CPU-only: on CUDA the ATen paths must run, and agree with the CPU in float64.

Path-SGD's fused update of a weight larger than one cache block (``BLOCK_ELEMENTS``) runs on the CPU in
row blocks or the C pass (:mod:`geomopt.optim._path_sgd_kernels`); on CUDA, the multi-tensor update. The
BN-LSTM's gate kernels (:mod:`geomopt.nn._gate_kernels`) run on the CPU; on CUDA, the fused loop's ATen
calls. On the GPU both CPU paths are replaced by functions that fail if called.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import geomopt.nn.bn_rnn.fused as bn_rnn
import geomopt.optim.path_sgd as path_sgd
from geomopt.geometry.path_norm import BLOCK_ELEMENTS
from geomopt.nn import BNRNN, BNInputLSTM, BNLSTM
from geomopt.optim import PathSGD, _path_sgd_kernels
from tests.cuda.test_optimizers import assert_weights_close
from tests.nn.test_bn_rnn import _graph_has, _run

pytestmark = pytest.mark.cuda


def _refuse(*args, **kwargs):
    raise AssertionError("a CPU-only kernel was called on CUDA")


def _refuse_cpu_kernels(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    if device.type == "cuda":  # under --cuda-as-cpu the CPU paths are the ones to run
        for module, name in ((path_sgd, "_RowBlockUpdate"), (_path_sgd_kernels, "update_contract"),
                             (bn_rnn, "_native_forward"), (bn_rnn._gate_kernels, "load")):
            monkeypatch.setattr(module, name, _refuse)


def _path_sgd_run(device: str, momentum: float, weight_decay: float) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(500, 600), nn.ReLU(), nn.Linear(600, 3)).double().to(device)
    assert model[0].weight.numel() > BLOCK_ELEMENTS  # the row-block / C pass on the CPU
    opt = PathSGD(model, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(32, 500, generator=g, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (32,), generator=g).to(device)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 1e-3)])
def test_path_sgd_large_weight_on_cuda_takes_aten_and_equals_cpu(cuda_device, monkeypatch, momentum, weight_decay):
    reference = _path_sgd_run("cpu", momentum, weight_decay)
    _refuse_cpu_kernels(cuda_device, monkeypatch)
    assert_weights_close(_path_sgd_run(str(cuda_device), momentum, weight_decay), reference, rtol=1e-10)


@pytest.mark.parametrize("cls, kw", [(BNLSTM, dict(max_steps=4)), (BNLSTM, dict(max_steps=8, missing_stats="batch")),
                                     (BNInputLSTM, dict(stats="frame", max_steps=4)), (BNRNN, dict(max_steps=4))])
def test_fused_bn_recurrences_on_cuda_equal_cpu(cuda_device, monkeypatch, cls, kw):
    """Outputs, final states, gradients of parameters / input / initial state and the running statistics of
    the fused layers (hand-written backward) on CUDA against the CPU (C gate kernels where a compiler is),
    float64, train and eval modes, T = 6 past T_max = 4."""
    torch.manual_seed(3)
    cpu = cls(3, 5, num_layers=2, **kw).double()
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gpu = cls(3, 5, num_layers=2, **kw).double().to(cuda_device)
    gpu.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(4)
    tensors = [torch.randn(*shape, generator=g, dtype=torch.float64)
               for shape in ((6, 6, 3), (2, 6, 5), (2, 6, 5), (6, 6, 5))]
    # x, h0, c0 (with gradients) and the weights of the functional, on each side
    on_cpu, on_gpu = ([t.to(d).requires_grad_(i < 3) for i, t in enumerate(tensors)] for d in ("cpu", cuda_device))
    _refuse_cpu_kernels(cuda_device, monkeypatch)
    for mode in ("eval", "train", "eval") if kw.get("missing_stats") == "batch" else ("train", "eval", "train"):
        cpu.train(mode == "train")
        gpu.train(mode == "train")
        got = _run(gpu, on_gpu[0], tuple(on_gpu[1:3]), on_gpu[3])
        for a, b in zip(got, _run(cpu, on_cpu[0], tuple(on_cpu[1:3]), on_cpu[3])):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)
        for a, b in zip(gpu.buffers(), cpu.buffers()):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)
    assert _graph_has(gpu(on_gpu[0])[0].grad_fn, "_Fused")  # the fused path, not the plain loop


def test_bnlstm_float32_on_cuda_close_to_float64(cuda_device, monkeypatch):
    """The training precision: float32 on the GPU within float32 rounding of the float64 CPU values."""
    torch.manual_seed(5)
    reference = BNLSTM(3, 16, num_layers=2, max_steps=12).double()
    model = BNLSTM(3, 16, num_layers=2, max_steps=12).to(cuda_device)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(8, 12, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _refuse_cpu_kernels(cuda_device, monkeypatch)
    out, (h, c) = model(x.float().to(cuda_device))
    ref, (h_ref, c_ref) = reference(x)
    for a, b in ((out, ref), (h, h_ref), (c, c_ref)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-5)
