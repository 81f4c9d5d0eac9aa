"""Model and checkpoint files: atomic writes, and reading torch-pickled files without running code.

`atomic_write` writes through a temporary file in the same folder, fsyncs it, then renames it over
the target: readers see the old file or the complete new one, never a partial one. Every load of a
torch file goes through `torch.load(weights_only=True)`: only tensors and plain values (numbers,
strings, lists, tuples, dicts) are accepted, so a crafted pickle cannot execute anything. Errors
name the file and say what is wrong with it (empty, truncated, or holding arbitrary objects).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Callable

import torch


class UnreadableFileError(ValueError):
    """A model or checkpoint file that cannot be read (empty, truncated, corrupt, or unsafe)."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` writes the content; then fsync and os.replace onto `path`. On any failure
    (a kill included) the temporary file is removed, or, after a kill -9, left as `.NAME.*.tmp`."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise UnreadableFileError(f"{path} is empty (0 bytes): the file is truncated; use an earlier copy "
                                  "or start again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if blocked:
            raise UnreadableFileError(
                f"{path}: refused to load: it holds Python objects other than tensors and plain values "
                f"({blocked[0]}), and unpickling them could run code. dcae-ext never writes such files") from None
        raise _truncated(path, size, error) from None
    except (EOFError, zipfile.BadZipFile, OSError) as error:
        raise _truncated(path, size, error) from None
    except RuntimeError as error:
        if "PytorchStreamReader" in str(error) or "zip" in str(error).lower():
            raise _truncated(path, size, error) from None
        raise


def _truncated(path: str, size: int, error: BaseException) -> UnreadableFileError:
    text = str(error).strip()
    reason = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return UnreadableFileError(f"{path} ({size} bytes) is truncated or corrupt and cannot be read as a "
                               f"torch file ({reason}); use an earlier copy or start again")
