"""Loads the compiled library and decides, per call, whether a kernel or the reference runs.

Importing never fails when the compiled library is missing: the ops then run their
pure-PyTorch references and say so once.
"""
from __future__ import annotations

import os
import warnings

import torch

try:
    from dcae_ext import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    LOADED = True
    WITH_CUDA = bool(_C.with_cuda)
    CUDA_ARCH_LIST = _C.cuda_arch_list
    LOAD_ERROR = None
except ImportError as error:  # not built, or built against another torch
    LOADED = False
    WITH_CUDA = False
    CUDA_ARCH_LIST = ""
    LOAD_ERROR = error

_reference_mode = os.environ.get("DCAE_EXT_REFERENCE", "0") not in ("", "0", "false", "False")
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


if not LOADED:
    _warn_once("not-loaded", f"dcae_ext: compiled kernels not available ({LOAD_ERROR}); "
                             "every op runs its pure-PyTorch reference")


def use_reference(flag: bool = True) -> bool:
    """Route every public op to its pure-PyTorch reference (True) or the kernels (False).

    Returns the previous setting. The environment variable DCAE_EXT_REFERENCE=1 sets it at import.
    """
    global _reference_mode
    previous = _reference_mode
    _reference_mode = bool(flag)
    return previous


def reference_mode() -> bool:
    return _reference_mode


def compiled_backends() -> list[str]:
    if not LOADED:
        return []
    return ["cpu", "cuda"] if WITH_CUDA else ["cpu"]


def kernels_missing(device_type: str) -> str | None:
    """Why this build has no kernels for `device_type` ('cpu' or 'cuda'), or None: for benchmarks,
    whose 'fast' side would time the pure-PyTorch references instead."""
    if not LOADED:
        return f"the compiled kernels did not load ({LOAD_ERROR}), so every op runs its reference"
    if device_type not in compiled_backends():
        return (f"dcae_ext was built without {device_type.upper()} kernels (compiled backends: "
                f"{', '.join(compiled_backends())}), so the ops run their references there; rebuild on a "
                "machine with the CUDA toolkit (README, Building)")
    return None


def has_ops(*op_names: str) -> bool:
    """True when the compiled library registered every op named. A library built from older
    sources lacks the newer ops: those then run their references, with a warning."""
    if not LOADED:
        return False
    missing = [name for name in op_names if not hasattr(torch.ops.dcae_ext, name)]
    if missing:
        _warn_once("missing-" + ",".join(missing), f"dcae_ext: the compiled library lacks {', '.join(missing)} "
                   "(built from older sources? rebuild the package); those ops run their references")
    return not missing


# The ops whose kernels, fake impls and autograd formulas are registered (by dcae_ext.ops.<op>).
_registered_ops: set[str] = set()


def mark_registered(*op_names: str) -> None:
    _registered_ops.update(op_names)


def use_kernel(op_name: str, tensor: torch.Tensor) -> bool:
    """True when the compiled kernel of `op_name` should run on `tensor`'s device."""
    if _reference_mode or op_name not in _registered_ops:
        return False
    device = tensor.device.type
    if device in ("cpu", "meta"):
        return True
    if device == "cuda":
        if WITH_CUDA:
            return True
        _warn_once("no-cuda", "dcae_ext was built without CUDA kernels; CUDA tensors run the references")
        return False
    _warn_once(f"device-{device}", f"dcae_ext has no kernels for device '{device}'; running the references")
    return False


def check_meta_arguments(check_op: str, tensor: torch.Tensor, *args) -> None:
    """The compiled op's argument checks for a call on meta tensors, which reaches the op's fake
    impl: that impl only computes output shapes, so without this a bad argument (a codebook of
    another width, a factor that does not divide H) gave a tensor of a wrong shape, no error."""
    if tensor.device.type == "meta":
        check_arguments(check_op, *args)


def check_arguments(check_op: str, *args) -> None:
    """Runs the compiled op's argument checks (`torch.ops.dcae_ext.<check_op>`) before a
    reference runs in its place, so that both raise the same ValueError. Skipped while
    torch.compile traces (the compiled call checks at run time) and without the library."""
    if LOADED and hasattr(torch.ops.dcae_ext, check_op) and not torch.compiler.is_compiling():
        getattr(torch.ops.dcae_ext, check_op)(*args)
