"""A folder that a run (`train`, `encode`, `tokenize`) writes into: one writer at a time, and a
record of the names its runs wrote, so that `--overwrite` deletes those and nothing else.

The lock is a POSIX record lock (`fcntl.lockf`) on `.dcae-ext.lock` in the folder: the kernel
releases it when its process exits, however it dies (kill -9 included), so a crashed run never
leaves a folder locked. A POSIX lock belongs to the process, not to the open file: the DataLoader
workers a run forks do not hold it (with `flock` they would, and a killed run's orphaned workers
would keep its folder locked for seconds), and NFS passes it to the server, so it holds across
machines where the NFS lock service runs. The file holds the writer's pid, for the message a second
writer gets; the writer deletes the file when it lets go (a file left by a killed one is simply
locked again). Where `fcntl` does not exist (Windows) there is no lock.

The record, `.dcae-ext-outputs.json`, lists the top-level names (files or folders) that runs of
dcae-ext own in the folder. A run records a name before it writes under it, and refuses to write
under a name that exists without being recorded: the user's `images/` is never mixed into, nor
deleted by `--overwrite`. A folder written before this record existed is recognised by its run
files (`adopt` in `foreign_names`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

from dcae_ext.files import atomic_write

LOCK_FILE = ".dcae-ext.lock"
RECORD_FILE = ".dcae-ext-outputs.json"
BOOKKEEPING = (LOCK_FILE, RECORD_FILE)


class FolderInUseError(OSError):
    """Another process is writing into the folder."""


class ForeignFilesError(ValueError):
    """The folder holds, under a name a run writes, something that no run of dcae-ext wrote."""


# --- the record of what runs wrote -----------------------------------------------------------------

def recorded_names(folder: str) -> set[str]:
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.isfile(path):
        return set()
    try:
        with open(path) as stream:
            names = json.load(stream)["names"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(f"{path} is not a record of dcae-ext outputs; delete it only if no run wrote into "
                         f"{folder}") from None
    return set(names)


def record_names(folder: str, names) -> None:
    """Add `names` (top-level names in `folder`) to the record, before anything is written under them."""
    known = recorded_names(folder)
    if set(names) <= known:
        return
    text = json.dumps({"written_by": "dcae-ext", "names": sorted(known | set(names))}, indent=1)

    def write(tmp: str) -> None:
        with open(tmp, "w") as stream:
            stream.write(text)

    atomic_write(os.path.join(folder, RECORD_FILE), write)


def foreign_names(folder: str, names, adopt: bool = False) -> list[str]:
    """The `names` present in `folder` that no run recorded (a folder shown with a trailing /).
    `adopt`: the caller recognised a run written before the record existed: none are foreign."""
    if adopt or not os.path.isdir(folder):
        return []
    recorded = recorded_names(folder)
    return [name + ("/" if os.path.isdir(os.path.join(folder, name)) else "") for name in names
            if name not in recorded and os.path.lexists(os.path.join(folder, name))]


def remove_recorded(folder: str, names) -> list[str]:
    """Delete those of `names` that a run recorded (and that exist); returns the names removed."""
    recorded = recorded_names(folder)
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        if name not in recorded or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        removed.append(name)
    return removed


# --- one writer --------------------------------------------------------------------------------------

def lock_holder(folder: str) -> str:
    """The pid written in the folder's lock file, or "unknown"."""
    try:
        with open(os.path.join(folder, LOCK_FILE)) as stream:
            return stream.read().strip() or "unknown"
    except OSError:
        return "unknown"


def acquire(folder: str) -> int | None:
    """Lock `folder` (created if missing) for this process; the lock file's descriptor (None without
    fcntl). FolderInUseError naming the folder and the holder's pid when another process holds it."""
    os.makedirs(folder, exist_ok=True)
    if fcntl is None:
        return None
    path = os.path.join(folder, LOCK_FILE)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(handle)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise FolderInUseError(f"{folder} is in use by another dcae-ext process (pid {lock_holder(folder)}): "
                                   "one run writes into a folder at a time; wait for it to end or stop it") from None
        try:  # the previous holder may have deleted the file between our open and flock: lock the new one
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(handle)
    os.ftruncate(handle, 0)
    os.write(handle, f"{os.getpid()}\n".encode())
    return handle


def release(folder: str, handle: int | None) -> None:
    if handle is None:
        return
    try:
        os.unlink(os.path.join(folder, LOCK_FILE))  # while still holding it: no one can lock this file after us
    except FileNotFoundError:
        pass
    os.close(handle)


@contextmanager
def writer_lock(folder: str):
    """Hold the folder's lock for the `with` block (see `acquire`)."""
    handle = acquire(folder)
    try:
        yield
    finally:
        release(folder, handle)
