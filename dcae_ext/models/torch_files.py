"""Reading torch-pickled files (.pt checkpoints) without running code from them.

Every load goes through `torch.load(weights_only=True)`: only tensors and plain values (numbers,
strings, lists, tuples, dicts) are accepted, so a crafted pickle cannot execute anything. Errors
name the file and say what is wrong with it (empty, truncated, or holding arbitrary objects).
"""
from __future__ import annotations

import os
import pickle
import zipfile

import torch


class UnreadableFileError(ValueError):
    """A model or checkpoint file that cannot be read (empty, truncated, corrupt, or unsafe)."""


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
