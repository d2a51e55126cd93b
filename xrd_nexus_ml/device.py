"""The one device policy of the package: which torch device runs a model, and how it is named.

"auto" (or None) means `TORCH_DEVICE` when set, else CUDA when present, else the CPU. A CUDA
request on a machine without CUDA falls back to the CPU with a logged warning: a scan, a
training job or a benchmark started with `--device cuda` on the wrong node still runs, and
every record names the device that really ran (`describe_device`).
"""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for `device` ("auto", None, "cpu", "cuda", "cuda:1", a torch.device)."""
    if device is None or str(device) == "auto":
        name = os.environ.get("TORCH_DEVICE")
        if name:
            device = name
        else:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %s asked for but CUDA is not available: running on the CPU", device)
        return torch.device("cpu")
    return device


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_device(device: str | torch.device) -> str:
    """'cpu: <model>, N threads' or 'cuda: <GPU name>', for the JSON of benchmarks and cards."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"
