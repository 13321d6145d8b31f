"""Data parallelism on NCCL: one process per GPU, against one CPU process taking the whole batch (float64).

Reference: ``tests.curvature.test_distributed._train`` on the CPU (checked there against gloo processes).
A world of one GPU runs the model in DistributedDataParallel and the K-FAC/EKFAC collectives through
NCCL with nothing to average; two GPUs (skipped with fewer) each take half of every batch. Both must end
with the CPU's weights to 1e-9 relative.
"""

from __future__ import annotations

import pytest
import torch

from tests.cuda.test_optimizers import assert_weights_close
from tests.curvature.test_distributed import MODELS, OPTIMIZERS, _train
from tests.processes import run_processes

pytestmark = pytest.mark.cuda


def _worker(rank: int, world: int, out: str, device_type: str) -> None:
    torch.set_default_dtype(torch.float64)
    device = f"cuda:{rank}" if device_type == "cuda" else "cpu"
    results = {(m, o): _train(m, o, rank=rank, world=world, device=device)[0] for m in MODELS for o in OPTIMIZERS}
    torch.save(results, f"{out}/rank{rank}.pt")


def _check(world: int, cuda_device: torch.device, tmp_path) -> None:
    backend = "nccl" if cuda_device.type == "cuda" else "gloo"
    assert run_processes(world, _worker, str(tmp_path), cuda_device.type, timeout=240, backend=backend) == [0] * world
    for rank in range(world):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for combo, weights in results.items():
            assert_weights_close(weights, _train(*combo)[0])


@pytest.mark.usefixtures("float64_default")
def test_nccl_world_of_one_gpu_equals_cpu(cuda_device, tmp_path):
    _check(1, cuda_device, tmp_path)


@pytest.mark.usefixtures("float64_default")
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_two_gpus_equal_one_cpu_process(cuda_device, tmp_path):
    _check(2, cuda_device, tmp_path)
