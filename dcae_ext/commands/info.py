"""`dcae-ext info`: versions, compiled backends and CUDA archs, GPU, reference mode."""
from __future__ import annotations

import platform

import torch


def add_parser(subparsers):
    return subparsers.add_parser("info", help="print build and runtime facts")


def collect() -> dict:
    from dcae_ext import __version__
    from dcae_ext.ops import _library

    facts = {
        "dcae_ext": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch cuda": torch.version.cuda or "none (CPU build)",
        "compiled backends": ", ".join(_library.compiled_backends()) or "none (references only)",
        "cuda arch list": _library.CUDA_ARCH_LIST or "-",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible",
        "reference mode": "on" if _library.reference_mode() else "off",
    }
    if not _library.LOADED:
        facts["load error"] = str(_library.LOAD_ERROR)
    return facts


def run(args) -> int:
    facts = collect()
    width = max(map(len, facts))
    for key, value in facts.items():
        print(f"{key.ljust(width)}  {value}")
    return 0
