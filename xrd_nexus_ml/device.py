"""The one device policy of the package: which torch device runs a model, and how it is named.

"auto" (or None) means `TORCH_DEVICE` when set, else CUDA when present, else the CPU. A CUDA
request on a machine without CUDA falls back to the CPU with a logged warning: a scan, a
training job or a benchmark started with `--device cuda` on the wrong node still runs, and
every record names the device that really ran (`describe_device`).

CPU threads: torch's team leaves one core to the rest of the workstation (the RunEngine, the
detector's IOC, a viewer), set once when this module is first imported (`apply_thread_policy`).
A team as large as the machine spins against any other busy process: beside one, 2 threads on 2
cores ran the networks 3 to 9 times slower, 1 thread at most 1.3 times (docs/benchmarks.md,
"Shared CPUs"). `XRD_NEXUS_ML_THREADS=N` sets the count, `keep` leaves torch's own choice, and
`OMP_NUM_THREADS` in the environment is respected.
"""

from __future__ import annotations

import logging
import os
import platform

import torch

log = logging.getLogger(__name__)


def thread_count(cpus: int | None, torch_default: int, setting: str | None = None) -> int | None:
    """The torch CPU threads the policy asks for (None: leave torch's choice)."""
    if setting:
        if setting.strip().lower() == "keep":
            return None
        try:
            return max(1, int(setting))
        except ValueError:
            log.warning("XRD_NEXUS_ML_THREADS=%r is neither a number nor 'keep': the default applies", setting)
    return max(1, min(int(torch_default), (cpus or 2) - 1))


def apply_thread_policy() -> int:
    """Set torch's CPU threads by `thread_count` (unless OMP_NUM_THREADS is set); the count now in force."""
    if "OMP_NUM_THREADS" not in os.environ:
        wanted = thread_count(os.cpu_count(), torch.get_num_threads(), os.environ.get("XRD_NEXUS_ML_THREADS"))
        if wanted is not None and wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


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


apply_thread_policy()
