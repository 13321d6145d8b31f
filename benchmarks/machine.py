"""One line describing the machine a benchmark ran on (CPU model, cores, threads, torch, GPU, load)."""

from __future__ import annotations

import os
import platform

import torch


def describe_machine(device: torch.device | str = "cpu") -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if torch.device(device).type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    if hasattr(os, "getloadavg"):
        text += f", 1-min load average {os.getloadavg()[0]:.2f}"
    return text
