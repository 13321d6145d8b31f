"""One line describing the machine a benchmark ran on (CPU model, cores, threads, torch, GPU, load)."""

from __future__ import annotations

import os

import torch

from geomopt.experiments.ledger import describe_machine as _machine


def describe_machine(device: torch.device | str = "cpu") -> str:
    """The results ledger's machine line, with the GPU when ``device`` is one, and the 1-minute load average."""
    text = _machine()
    if torch.device(device).type == "cuda" and "GPU" not in text:
        text += f", GPU {torch.cuda.get_device_name(device)}"
    if hasattr(os, "getloadavg"):
        text += f", 1-min load average {os.getloadavg()[0]:.2f}"
    return text
