"""What a benchmark ran on: platform, CPU model (/proc/cpuinfo), cores, load, torch and its threads, the GPU, the
code version and the date. Numbers from a loaded machine are not comparable: `load_avg` says how busy it was."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["machine_info", "cpu_model", "usable_cores"]


def cpu_model() -> str:
    """The first 'model name' of /proc/cpuinfo, else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its affinity), as mist_core._runtime.usable_cores counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info(device: str) -> dict:
    info: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        d = torch.device(device)
        props = torch.cuda.get_device_properties(d)
        info.update(device_name=torch.cuda.get_device_name(d), cuda=torch.version.cuda,
                    device_memory_gib=round(props.total_memory / 2**30, 1))
    return info
