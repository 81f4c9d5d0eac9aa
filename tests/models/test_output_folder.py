"""dcae_ext.output_folder: the one-writer lock (held per process, released by any death, not held
by forked children) and the record of what runs wrote."""
import os
import signal
import subprocess
import sys

import pytest

from dcae_ext import output_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

# locks the folder, forks a child that lives on (as a DataLoader worker does), prints both pids
HOLDER = """
import os, sys, time
from dcae_ext.output_folder import acquire
acquire(sys.argv[1])
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(os.getpid(), child, flush=True)
time.sleep(60)
"""


def test_a_killed_writer_leaves_no_lock_even_while_its_forked_child_lives(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    parent, child = map(int, holder.stdout.readline().split())
    try:
        with pytest.raises(output_folder.FolderInUseError, match=f"{tmp_path} is in use .*pid {parent}"):
            output_folder.acquire(str(tmp_path))
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        os.kill(child, 0)  # the child still runs
        with output_folder.writer_lock(str(tmp_path)):
            assert output_folder.lock_holder(str(tmp_path)) == str(os.getpid())
        assert not os.path.exists(tmp_path / output_folder.LOCK_FILE)  # let go: the file is gone
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_record_decides_what_is_foreign_and_what_is_removed(tmp_path):
    folder = str(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "mine.png").write_bytes(b"user")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    names = ("images", "metrics.jsonl", "model")
    assert output_folder.foreign_names(folder, names) == ["images/", "metrics.jsonl"]
    assert output_folder.foreign_names(folder, names, adopt=True) == []
    output_folder.record_names(folder, ["metrics.jsonl", "model"])
    assert output_folder.foreign_names(folder, names) == ["images/"]
    assert output_folder.remove_recorded(folder, names) == ["metrics.jsonl"]  # model: recorded, never written
    assert sorted(os.listdir(tmp_path)) == [output_folder.RECORD_FILE, "images"]
    (tmp_path / output_folder.RECORD_FILE).write_text("not json")
    with pytest.raises(ValueError, match="is not a record of dcae-ext outputs"):
        output_folder.recorded_names(folder)
