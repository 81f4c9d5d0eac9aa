"""benchmarks/bench_encode.py starts (its imports resolve) and races the two encoders on a tiny model."""
import json
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_encode.py")

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["bench_encode.py", *argv])
    runpy.run_path(SCRIPT, run_name="__main__")


def test_help(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(monkeypatch, "--help")
    assert exit_info.value.code == 0 and "--no-save" in capsys.readouterr().out


def test_tiny_run_records_both_sides(tmp_path, monkeypatch, capsys):
    pytest.importorskip("diffusers")
    results = tmp_path / "encode.jsonl"
    _run(monkeypatch, "--preset", "tiny", "--resolution", "32", "--images", "2", "--batch-size", "2",
         "--workers", "0", "--repeats", "1", "--device", "cpu", "--results", str(results))
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["impl"] for r in records] == ["dcae-ext encode", "diffusers AutoencoderDC loop", "comparison"]
    assert records[2]["max_abs_latent_diff"] < 1e-4
    assert "speedup" in capsys.readouterr().out
    _run(monkeypatch, "--preset", "tiny", "--resolution", "32", "--images", "2", "--batch-size", "2",
         "--workers", "0", "--repeats", "1", "--device", "cpu", "--results", str(results), "--no-save")
    assert len(results.read_text().splitlines()) == 3
