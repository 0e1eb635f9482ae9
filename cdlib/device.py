"""Device choice and the precision that goes with it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import ConfigError

__all__ = ["pick_device", "amp_dtype", "describe", "name", "cpu_model"]


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; anything else is taken as given."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {preference!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s); "
                          "use cuda:0 up to the last one, or auto.")
    if device.type == "mps" and not mps:
        raise ConfigError(f"device {preference!r} asked for, but Apple's MPS is not available here; use --device cpu "
                          "or auto.")
    return device


def amp_dtype(device: torch.device, preference: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``device``: bf16 where supported, fp16 on older GPUs, none on CPU.

    CPU autocast in bf16 is slower than fp32 on most CPUs without AMX, so
    ``auto`` keeps the CPU in fp32.
    """
    if preference == "off":
        return None
    if preference == "bf16":
        return torch.bfloat16
    if preference == "fp16":
        if device.type == "cpu":
            raise ConfigError("fp16 autocast is for GPUs; use --amp bf16 or --amp off on a CPU.")
        return torch.float16
    if device.type == "cuda":
        # is_bf16_supported() is also True where bf16 is only emulated (e.g. Colab's
        # T4): bf16 tensor cores arrive with compute capability 8 (Ampere).
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return None


def cpu_model() -> str:
    """The CPU's model name as the operating system reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def name(device: Union[str, torch.device]) -> str:
    """A readable name of a device: the GPU's model, "Apple MPS", or the CPU's model, cores and torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"CPU ({cpu_model()}, {os.cpu_count()} cores, {threads} torch thread{'' if threads == 1 else 's'})"
    return device.type.upper()


def describe(preference: str = "auto", warn_without_gpu: bool = True) -> torch.device:
    """The device ``preference`` picks, after printing one line about it (for notebooks).

    Without a GPU (and with ``warn_without_gpu``) the line also says what to do;
    it is a normal line, not a warning, so a rendered page shows no warning machinery.
    """
    device = pick_device(preference)
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        print(f"Using GPU: {name(device)}, {memory / 2**30:.0f} GiB, torch {torch.__version__}")
    else:
        advice = (" No GPU here: use the small configuration (RECIPE = \"demo\"), or on Colab, "
                  "Runtime > Change runtime type > GPU." if warn_without_gpu and device.type == "cpu" else "")
        print(f"Using {name(device)}, torch {torch.__version__}.{advice}")
    return device
