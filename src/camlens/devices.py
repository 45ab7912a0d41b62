"""Checking a device name before anything runs on it. torch is imported only to check a device
other than the CPU, so that :mod:`camlens.config` checks its options without loading it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from camlens.errors import CamlensError

if TYPE_CHECKING:
    import torch


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, then ``cuda:0``... and ``mps`` where present."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine; a :class:`CamlensError` naming
    the device and the available ones otherwise (``banana``, ``cuda`` without a GPU, ``cuda:3`` on
    a machine with one)."""
    import torch

    here = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CamlensError(f"unknown device {str(device)!r} (available: {here})") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CamlensError(
                f"device {str(device)!r} is not available: this machine has no CUDA GPU "
                f"(available: {here})"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CamlensError(f"device {str(device)!r} is not available (available: {here})")
        return parsed
    if parsed.type == "mps" and "mps" in available_devices():
        return parsed
    raise CamlensError(f"device {str(device)!r} is not available here (available: {here})")


def device_name(device: str) -> str:
    """``device`` as :func:`check_device` has it, as a string (``"cpu"``, ``"cuda:0"``...); the
    CPU is known without importing torch."""
    if device.strip() == "cpu":
        return "cpu"
    return str(check_device(device))
