"""Which device a run uses (bottom layer: the trainer, the feature networks and the CLI
all resolve device names the same way)."""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else must be a usable device."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}. Accepted: auto, cpu, cuda, cuda:N, mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU. Use device=cpu or auto.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} asked for, but MPS is not available here. Use device=cpu or auto.")
    return device
