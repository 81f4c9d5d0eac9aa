"""Atomic files: the mode they get, the pair save_pretrained writes surviving a kill between its two
files, and the one place that knows what a killed write leaves behind."""
import os
import stat
from pathlib import Path

import pytest
import torch

from dcae_ext import files
from dcae_ext.models import DCAE, IBQTokenizer, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    files.atomic_write(tmp_path / "weights.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    with open(tmp_path / "plain.bin", "wb"):
        pass
    assert _mode(tmp_path / "weights.bin") == _mode(tmp_path / "plain.bin") == 0o666 & ~mask
    files.write_files_together(tmp_path / "model", {"a.bin": lambda tmp: Path(tmp).write_bytes(b"a")})
    assert _mode(tmp_path / "model" / "a.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "model") == 0o777 & ~mask


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced where they can be opened")
def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        status = os.fstat(fd)
        synced.append((stat.S_ISDIR(status.st_mode), status.st_ino, os.path.exists(tmp_path / "a.bin")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.atomic_write(tmp_path / "a.bin", lambda tmp: Path(tmp).write_bytes(b"a"))
    assert synced[-1] == (True, os.stat(tmp_path).st_ino, True)  # the folder, once the new name is in it


def _interrupted(monkeypatch):
    """Path.write_text (the config.json write, which save_pretrained does after the weights) dies."""
    def die(self, *args, **kwargs):
        raise KeyboardInterrupt("killed between the weights and config.json")

    monkeypatch.setattr(Path, "write_text", die)


def _dcae(seed: int) -> DCAE:
    torch.manual_seed(seed)
    return DCAE(tiny_config(latent_channels=8 if seed else 4)).eval()


@pytest.mark.parametrize("format", ["diffusers", "efficientvit"])
def test_a_kill_between_weights_and_config_leaves_the_old_pair(tmp_path, monkeypatch, format):
    old, new, folder = _dcae(0), _dcae(1), tmp_path / "model"
    old.save_pretrained(folder, format=format)
    (folder / "README.md").write_text("kept")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    _interrupted(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(folder, format=format)
    monkeypatch.undo()
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    assert files.stale_temporaries(tmp_path) == []
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(DCAE.from_pretrained(folder)(x).reconstruction, old(x).reconstruction)
    new.save_pretrained(folder, format=format)  # and once complete, the new pair with the other files
    assert DCAE.from_pretrained(folder).config.latent_channels == 8
    assert (folder / "README.md").read_text() == "kept"


def test_tokenizer_pair_survives_a_kill_between_its_files(tmp_path, monkeypatch):
    torch.manual_seed(0)
    old = IBQTokenizer("tiny").eval()
    torch.manual_seed(1)
    new = IBQTokenizer("tiny").eval()
    old.save_pretrained(tmp_path / "tok")
    _interrupted(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(tmp_path / "tok")
    monkeypatch.undo()
    loaded = IBQTokenizer.from_pretrained(tmp_path / "tok")
    for name, tensor in old.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "rename-aside"])
def test_write_files_together_replaces_the_set_and_keeps_other_entries(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(files, "_exchange", lambda first, second: False)  # an OS without renameat2
    folder = tmp_path / "pair"
    files.write_files_together(folder, {"a": lambda t: Path(t).write_text("a1"), "b": lambda t: Path(t).write_text("b1")})
    (folder / "notes").mkdir()
    (folder / "notes" / "n.txt").write_text("n")
    files.write_files_together(folder, {"a": lambda t: Path(t).write_text("a2"), "b": lambda t: Path(t).write_text("b2")})
    assert sorted(os.listdir(folder)) == ["a", "b", "notes"]
    assert [(folder / n).read_text() for n in ("a", "b", "notes/n.txt")] == ["a2", "b2", "n"]
    assert os.listdir(tmp_path) == ["pair"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes and symlinks")
def test_write_files_together_keeps_the_folders_mode_and_writes_through_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    os.chmod(tmp_path / "real", 0o750)
    os.symlink(tmp_path / "real", tmp_path / "link")
    files.write_files_together(tmp_path / "link", {"a": lambda t: Path(t).write_text("a")})
    assert os.path.islink(tmp_path / "link") and (tmp_path / "real" / "a").read_text() == "a"
    assert _mode(tmp_path / "real") == 0o750


def test_stale_temporaries_of_one_target_or_all(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"done")
    (tmp_path / ".checkpoint.pt.ab12.tmp").write_bytes(b"half")
    (tmp_path / ".model.cd34.tmp").mkdir()  # a write_files_together killed mid-write
    (tmp_path / ".model.cd34.tmp" / "config.json").write_text("{}")
    (tmp_path / ".hidden").write_text("not ours")
    assert files.stale_temporaries(tmp_path, "checkpoint.pt") == [str(tmp_path / ".checkpoint.pt.ab12.tmp")]
    assert files.remove_stale_temporaries(tmp_path, "model") == [".model.cd34.tmp"]
    assert files.remove_stale_temporaries(tmp_path) == [".checkpoint.pt.ab12.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "checkpoint.pt"]


def test_what_a_killed_write_leaves_is_what_stale_temporaries_finds(tmp_path, monkeypatch):
    def killed(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "unlink", lambda path: None)  # a kill -9 runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "shard.safetensors", killed)
    monkeypatch.undo()
    (left,) = os.listdir(tmp_path)
    assert files.stale_temporaries(tmp_path, "shard.safetensors") == [str(tmp_path / left)]
    assert files.stale_temporaries(tmp_path, "shard") == []


def test_read_json_names_a_broken_file(tmp_path):
    (tmp_path / "config.json").write_text('{"a": ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        files.read_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("[1, 2]")
    assert files.read_json(tmp_path / "config.json") == {}
