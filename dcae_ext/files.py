"""Model and checkpoint files: atomic writes, and reading torch-pickled files without running code.

`atomic_write` writes through a temporary file in the same folder, fsyncs it, then renames it over
the target: readers see the old file or the complete new one, never a partial one. The file gets
the mode a plain `open` would give it (0666 less the umask), and the folder is fsynced after the
rename so the new name survives a power cut. `write_files_together` does the same for several
files of one folder at once (weights and their config.json). A process killed mid-write leaves a
`.NAME.*.tmp` file or folder; `remove_stale_temporaries` owns that naming. Every load of a
torch file goes through `torch.load(weights_only=True)`: only tensors and plain values (numbers,
strings, lists, tuples, dicts) are accepted, so a crafted pickle cannot execute anything. Errors
name the file and say what is wrong with it (empty, truncated, or holding arbitrary objects).
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import torch


class UnreadableFileError(ValueError):
    """A model or checkpoint file that cannot be read (empty, truncated, corrupt, or unsafe)."""


TEMPORARY_SUFFIX = ".tmp"


def _temporary_prefix(name: str) -> str:
    return f".{name}."


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` writes the content; then fsync and os.replace onto `path`. On any failure
    (a kill included) the temporary file is removed, or, after a kill -9, left as `.NAME.*.tmp`."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=_temporary_prefix(name), suffix=TEMPORARY_SUFFIX, dir=folder)
    os.close(handle)
    try:
        write(tmp)
        _finish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def write_files_together(folder: str | os.PathLike, writers: dict[str, Callable[[str], None]],
                         leave_out: tuple[str, ...] = ()) -> None:
    """Files of `folder` that belong together (weights and their config) written as one: each
    `writers[name](tmp_path)` writes one, in a staging sibling folder that also gets a hard link to
    every other file of `folder` but those named in `leave_out` (files the new set replaces); then
    the two folders swap places in one step (Linux renameat2 RENAME_EXCHANGE), so a reader, or a
    kill at any instant, sees the old set or the new one. Where the OS has no such swap, the old folder is renamed aside and the new one into place:
    a kill between the two renames leaves `folder` missing, never mixed (both sets stay in
    `.NAME.*.tmp` folders)."""
    folder = os.path.realpath(os.fspath(folder))  # a symlinked folder: write where it points
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=_temporary_prefix(name), suffix=TEMPORARY_SUFFIX, dir=parent)
    try:
        if os.path.isdir(folder):
            shutil.copymode(folder, staging)
        else:
            os.chmod(staging, 0o777 & ~_umask())
        for file_name, write in writers.items():
            write(os.path.join(staging, file_name))
            _finish_file(os.path.join(staging, file_name))
        if os.path.isdir(folder):
            for entry in os.listdir(folder):
                if entry not in writers and entry not in leave_out:
                    _link_tree(os.path.join(folder, entry), os.path.join(staging, entry))
        _fsync_folder(staging)
        if not os.path.isdir(folder):
            os.rename(staging, folder)
        elif not _exchange(staging, folder):
            aside = tempfile.mkdtemp(prefix=_temporary_prefix(name), suffix=TEMPORARY_SUFFIX, dir=parent)
            os.rename(folder, os.path.join(aside, name))
            try:
                os.rename(staging, folder)
            except BaseException:
                os.rename(os.path.join(aside, name), folder)
                os.rmdir(aside)
                raise
            staging = aside
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the staging folder, or after a swap the old one
    _fsync_folder(parent)


def stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Sorted paths of what `atomic_write` / `write_files_together` left in `folder` when killed
    mid-write: for target `name` only, or for any target."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, entry) for entry in os.listdir(folder) if _is_temporary(entry, name))


def _is_temporary(entry: str, name: str | None) -> bool:
    """`.NAME.XXXXXXXX.tmp`, XXXXXXXX being tempfile's random letters, digits and underscores (no
    dot: `.model.x.tmp` is a temporary of `model`, not of `model.x`)."""
    if not (entry.startswith(".") and entry.endswith(TEMPORARY_SUFFIX)):
        return False
    target, _, random = entry[1:-len(TEMPORARY_SUFFIX)].rpartition(".")
    return bool(target) and random.replace("_", "").isalnum() and (name is None or target == name)


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[str]:
    """Delete `stale_temporaries(folder, name)`; returns the names removed. Only while no other
    process writes into `folder`: its temporaries look the same."""
    removed = []
    for path in stale_temporaries(folder, name):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)
        removed.append(os.path.basename(path))
    return removed


def read_json(file: str | os.PathLike) -> dict:
    """A JSON config file's object ({} when it holds another JSON value); ValueError naming the file
    when it is not JSON."""
    try:
        data = json.loads(Path(file).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error})") from None
    return data if isinstance(data, dict) else {}


def _umask() -> int:
    try:  # Linux: read without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as stream:
            return next(int(line.split()[1], 8) for line in stream if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _finish_file(path: str) -> None:
    """mkstemp creates 0600 whatever the umask: give the file a plain `open`'s mode, then fsync it."""
    os.chmod(path, 0o666 & ~_umask())
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _link_tree(source: str, target: str) -> None:
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: str, target: str) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _renameat2():
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if os.name == "posix" else None
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(first: str, second: str) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the OS or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not offered here
        return False
    raise OSError(error, os.strerror(error), second)


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise UnreadableFileError(f"{path} is empty (0 bytes): the file is truncated; use an earlier copy "
                                  "or start again")
    with open(path, "rb") as stream:
        head = stream.read(4)
    if not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip archive; the legacy format is a pickle
        raise UnreadableFileError(f"{path} is not a checkpoint or weights file (it is neither a torch file nor "
                                  f"safetensors: it starts with {head!r})")
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
