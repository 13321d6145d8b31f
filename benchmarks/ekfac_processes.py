"""EKFAC in 1 process vs 2 data-parallel processes (gloo), float64 digits MLP, 8 steps: the largest
parameter difference (the gradients and factors are the global batch's, so only rounding differs).

Run: PYTHONPATH=src:. python benchmarks/ekfac_processes.py
"""
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from geomopt.data import load_dataset, make_loader
from geomopt.optim import EKFAC, KFAC
from geomopt.train import fit
from tests.processes import run_processes


def _run(out: str, opt_name: str) -> None:
    x, y = load_dataset("digits", seed=0, train_size=400).train.tensors
    data = TensorDataset(x.double().flatten(1), y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    opt = {"ekfac": EKFAC, "kfac": KFAC}[opt_name](model, lr=0.1, update_freq=1, inv_freq=2, kl_clip=None)
    fit(model, opt, make_loader(data, 50, shuffle=True, seed=0), make_loader(data, 100, shuffle=False), epochs=1,
        out_dir=out, progress=False, divergence_factor=None)


def _worker(rank, world, root, opt_name):
    _run(str(Path(root) / "two"), opt_name)


if __name__ == "__main__":
    for opt_name in ("kfac", "ekfac"):
        with tempfile.TemporaryDirectory() as root:
            _run(str(Path(root) / "one"), opt_name)
            assert run_processes(2, _worker, root, opt_name, timeout=600) == [0, 0]
            one, two = (torch.load(Path(root) / d / "checkpoint.pt", weights_only=False)["model"] for d in ("one", "two"))
            diff = max((one[k] - two[k]).abs().max().item() for k in one)
            print(f"{opt_name}: 1 vs 2 processes, max parameter difference after 8 steps: {diff:.1e}")
    sys.exit(0)
