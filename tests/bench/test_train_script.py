"""benchmarks/bench_train.py races training steps with the fast ops against reference mode on the
real Trainer: the two sides take different paths, records are complete, running out of memory on
one side is a result."""
import json
import math
import os
import runpy
import statistics
import sys

import pytest
import torch

from dcae_ext import ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_train.py")
REFERENCE_OPS = ("linear_attention", "pixel_unshuffle_mean", "pixel_shuffle_repeat", "ibq_quantize",
                 "ibq_entropy_loss", "ibq_nearest_code")
TINY = ("--resolution", "32", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--rounds", "2",
        "--device", "cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", *argv])
    runpy.run_path(SCRIPT, run_name="__main__")


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def reference_calls(monkeypatch):
    """(op name, reference mode at the call) for every call of a reference op."""
    calls = []
    for name in REFERENCE_OPS:
        original = getattr(ops.reference, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append((_name, ops.reference_mode()))
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops.reference, name, counted)
    return calls


def test_help(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(monkeypatch, "--help")
    assert exit_info.value.code == 0 and "--grad-checkpointing" in capsys.readouterr().out


@pytest.mark.parametrize("preset, message", [("tiny", "write dcae:tiny or ibq:tiny"),
                                             ("ibq:dc-ae-f32c32-in-1.0", "unknown preset"),
                                             ("vae:tiny", "unknown model")])
def test_bad_preset_names_the_flag(monkeypatch, preset, message):
    with pytest.raises(SystemExit, match=message):
        _run(monkeypatch, "--preset", preset, "--no-save", *TINY)


def test_tiny_presets_race_fast_against_reference(tmp_path, monkeypatch, capsys, reference_calls):
    results = tmp_path / "train.jsonl"
    ops.use_reference(True)  # the caller's setting, to be restored (the autouse fixture resets it after)
    _run(monkeypatch, "--preset", "dcae:tiny,ibq:tiny", "--results", str(results), *TINY)
    records = _read(results)
    assert [(r["model"], r["impl"]) for r in records] == [
        ("dcae", "fast"), ("dcae", "reference"), ("dcae", "comparison"),
        ("ibq", "fast"), ("ibq", "reference"), ("ibq", "comparison")]
    for fast, reference, comparison in (records[:3], records[3:]):
        for side in (fast, reference):
            assert side["preset"] == "tiny" and side["batch_size"] == 2 and side["resolution"] == 32
            assert side["precision"] == "fp32" and side["lpips"] == "alex, random trunk"  # the tiny presets' recipe
            assert len(side["runs_s"]) == 2 and not side["oom"] and side["peak_mem_mb"] is None
            rate = side["images_per_s"]
            assert 0 < rate["min"] <= rate["median"] <= rate["max"]
            assert rate["median"] == pytest.approx(statistics.median(2 / s for s in side["runs_s"]))
            assert math.isfinite(side["last_loss"]) and side["skipped_steps"] == 0
        # The profiled step of each side: kernels on the fast path, none in reference mode.
        assert fast["kernel_ops"] > 0 and reference["kernel_ops"] == 0 and comparison["paths_differ"]
        assert comparison["speedup_median"] == pytest.approx(
            fast["images_per_s"]["median"] / reference["images_per_s"]["median"])
    assert records[0]["discriminator"] is False and records[3]["discriminator"] is True
    # The reference ops ran, and only while reference mode was on; the setting is restored after.
    called = {name for name, _ in reference_calls}
    assert {"linear_attention", "pixel_unshuffle_mean", "pixel_shuffle_repeat", "ibq_quantize"} <= called
    assert all(mode for _, mode in reference_calls)
    assert ops.reference_mode()
    assert "fast / reference" in capsys.readouterr().out

    _run(monkeypatch, "--preset", "ibq:tiny", "--results", str(results), "--no-save", "--lpips", "off", *TINY)
    assert len(_read(results)) == 6


def test_out_of_memory_on_one_side_is_recorded(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(ops.reference, "ibq_quantize", out_of_memory)
    results = tmp_path / "train.jsonl"
    _run(monkeypatch, "--preset", "ibq:tiny", "--lpips", "off", "--results", str(results), *TINY)
    fast, reference, comparison = _read(results)
    assert reference["oom"] and reference["oom_at"] == "check step" and reference["images_per_s"] is None
    assert not fast["oom"] and len(fast["runs_s"]) == 2 and fast["images_per_s"]["median"] > 0
    assert comparison["speedup_median"] is None and comparison["paths_differ"] is None
    assert "OUT OF MEMORY at check step" in capsys.readouterr().out


def test_max_seconds_ends_the_rounds_early(tmp_path, monkeypatch):
    results = tmp_path / "train.jsonl"
    _run(monkeypatch, "--preset", "ibq:tiny", "--lpips", "off", "--max-seconds", "1e-3", "--results", str(results),
         *TINY, "--rounds", "3")  # the last --rounds counts
    fast, reference, _ = _read(results)
    assert len(fast["runs_s"]) == len(reference["runs_s"]) == 1 and fast["max_seconds"] == 1e-3


def test_options_reach_the_trainer(tmp_path, monkeypatch):
    """bf16 autocast, activation checkpointing and DC-AE phase 3 (its discriminator) on the tiny DC-AE."""
    results = tmp_path / "train.jsonl"
    _run(monkeypatch, "--preset", "dcae:tiny", "--phase", "3", "--precision", "bf16", "--grad-checkpointing",
         "--lpips", "off", "--results", str(results), *TINY)
    fast, reference, comparison = _read(results)
    for side in (fast, reference):
        assert (side["phase"], side["precision"], side["grad_checkpointing"]) == (3, "bf16", True)
        assert side["discriminator"] and side["lpips"] == "off" and side["images_per_s"]["median"] > 0
    assert comparison["paths_differ"]
