"""What machine a benchmark ran on (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pyro
import torch


def machine() -> dict:
    """CPU model, usable cores, versions, torch threads and the load average right now."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(
        nproc=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        cpu=cpu,
        torch=torch.__version__,
        pyro=pyro.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        load=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )
