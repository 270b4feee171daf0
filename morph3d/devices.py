"""Which torch devices this install can use, checked before any work."""

from __future__ import annotations

from morph3d.errors import InputError


def available_devices() -> list[str]:
    """'cpu', then 'cuda:0' ... for each CUDA device torch sees here."""
    import torch

    devices = ["cpu"]
    if torch.backends.cuda.is_built() and torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def check_device(device: str, option: str = "--device") -> str:
    """`device` as given when this install can run on it; otherwise an `InputError` that
    says which devices it can use. 'cpu' is answered without importing torch."""
    name = str(device).strip().lower()
    if name == "cpu":
        return device
    import torch

    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(f"{option} {device}: not a device morph3d runs on (cpu, cuda, cuda:N)")
    available = ", ".join(available_devices())
    if not torch.backends.cuda.is_built():
        raise InputError(f"{option} {device}: this install of torch has no CUDA "
                         f"(available: {available})")
    if not torch.cuda.is_available():
        raise InputError(f"{option} {device}: no CUDA device is visible "
                         f"(available: {available})")
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"{option} {device}: there is no such CUDA device "
                         f"(available: {available})")
    return device
