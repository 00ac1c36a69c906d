"""Which machine a figure came from: CPU model, threads, and the floating-point state that changes CPU speed.

Floating-point speed differs by CPU vendor: x86 cores without flush-to-zero take slow microcode on denormal
floats, far more on Intel than on AMD, so a CPU speed claim holds only where it was measured (README, "Speed").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (`lscpu`'s "Model name", from /proc/cpuinfo on Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def default_device() -> str:
    """Where commands run when no --device is given: the GPU if torch sees one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has a setter, `set_flush_denormal`, no getter)."""
    return torch.tensor([1e-40], dtype=torch.float32).mul(1.0).item() == 0.0


def describe(device: torch.device | str = "cpu") -> str:
    """One line naming the machine: the GPU's name, or the CPU model, cores, torch threads and the denormal state."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    flushed = "flushed to zero" if denormals_flushed() else "not flushed"
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, denormals {flushed}"
