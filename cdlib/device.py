"""Device choice and the precision that goes with it."""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .errors import ConfigError

__all__ = ["pick_device", "amp_dtype", "describe"]


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; anything else is taken as given."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} asked for, but this machine has no CUDA GPU; use --device cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {preference!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s); "
                          "use cuda:0 up to the last one, or auto.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError(f"device {preference!r} asked for, but Apple's MPS is not available here; use --device cpu or auto.")
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


def describe(preference: str = "auto", warn_without_gpu: bool = True) -> torch.device:
    """Print what device was found (for notebooks) and warn, not fail, without a GPU."""
    device = pick_device(preference)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"Using GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    elif device.type == "mps":
        print(f"Using Apple MPS, torch {torch.__version__}")
    else:
        print(f"Using CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
        if warn_without_gpu:
            warnings.warn(
                "No GPU found: the full CIFAR-100 recipe would take days on a CPU. "
                "Use the small configuration (RECIPE = \"demo\") or, on Colab, Runtime > Change runtime type > GPU.",
                stacklevel=2,
            )
    return device
