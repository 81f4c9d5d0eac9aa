"""The benchmark harness: medians, out-of-memory records, the JSONL schema, the table, the plots."""
import json

import pytest
import torch
from PIL import Image

from dcae_ext.bench import harness
from dcae_ext.bench.harness import append_records, make_record, measure, results_path
from dcae_ext.bench.plots import plot_ibq_scaling, plot_speedups, write_plots
from dcae_ext.bench.report import format_table

SCHEMA = {"op", "impl", "device", "device_name", "dtype", "shape", "fwd_ms", "fwdbwd_ms", "peak_mem_mb", "oom",
          "torch", "cuda", "date"}


def _fake_clock(monkeypatch, durations_ms):
    """perf_counter advances by the next duration each time the timed function runs."""
    state = {"now": 0.0, "left": list(durations_ms)}
    monkeypatch.setattr(harness.time, "perf_counter", lambda: state["now"])

    def step():
        state["now"] += state["left"].pop(0) / 1e3

    return step


def test_time_is_the_median_of_the_timed_runs_after_warmup(monkeypatch):
    step = _fake_clock(monkeypatch, [1000, 1000, 5, 1, 100, 2, 3])  # two warm-up runs first
    assert harness._time_ms(step, torch.device("cpu"), warmup=2, repeats=5) == pytest.approx(3.0)


def test_measure_reports_fwd_fwdbwd_and_peak_memory():
    x = torch.randn(256, 256, requires_grad=True)

    def forward():
        return (x @ x).sum()

    def forward_backward():
        x.grad = None
        forward().backward()

    result = measure(forward, forward_backward, device="cpu", warmup=1, repeats=3)
    assert result["oom"] is False
    assert result["fwd_ms"] > 0 and result["fwdbwd_ms"] > 0
    assert result["peak_mem_mb"] >= 256 * 256 * 4 / 2**20  # at least the product was alive


def test_measure_records_out_of_memory_and_raises_other_errors():
    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    result = measure(out_of_memory, device="cpu", warmup=0, repeats=1)
    assert result == {"fwd_ms": None, "fwdbwd_ms": None, "peak_mem_mb": None, "oom": True}

    def broken():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure(broken, device="cpu", warmup=0, repeats=1)


def _records():
    shape = {"N": 64, "D": 8}
    m = {"fwd_ms": 1.0, "fwdbwd_ms": 4.0, "peak_mem_mb": 2.0, "oom": False}
    ref = {"fwd_ms": 2.0, "fwdbwd_ms": 6.0, "peak_mem_mb": 9.0, "oom": False}
    oom = {"fwd_ms": None, "fwdbwd_ms": None, "peak_mem_mb": None, "oom": True}
    records = []
    for k in (256, 1024, 4096):
        records.append(make_record("ibq_quantize", "fast", "cpu", torch.float32, dict(shape, K=k), m,
                                   fraction_of_limit=0.25))
        records.append(make_record("ibq_quantize", "reference", "cpu", torch.float32, dict(shape, K=k),
                                   oom if k == 4096 else dict(ref, peak_mem_mb=9.0 * k / 256)))
    records.append(make_record("pixel_unshuffle_mean", "fast", "cpu", torch.float32, {"x": [1, 8, 4, 4]}, m))
    records.append(make_record("pixel_unshuffle_mean", "reference", "cpu", torch.float32, {"x": [1, 8, 4, 4]}, ref))
    return records


def test_jsonl_records_carry_the_schema(tmp_path):
    path = results_path("cpu", str(tmp_path))
    assert path.endswith("cpu.jsonl")
    records = _records()
    append_records(records[:2], path)
    append_records(records[2:], path)  # appends, never overwrites
    lines = [json.loads(line) for line in open(path)]
    assert len(lines) == len(records)
    for line in lines:
        assert SCHEMA <= set(line)
        assert line["device"] == "cpu" and line["dtype"] == "float32" and isinstance(line["shape"], dict)
    assert lines[0]["fraction_of_limit"] == 0.25


def test_table_pairs_fast_with_reference():
    table = format_table(_records())
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["op", "shape"] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 4  # one row per fast record
    assert "2.00x" in table and "1.50x" in table  # fwd 2/1, fwd+bwd 6/4
    assert "ref OOM" in table and "25%" in table


def test_plots_are_written_as_png(tmp_path):
    records = _records()
    speedup = plot_speedups(records, str(tmp_path / "speedup.png"))
    scaling = plot_ibq_scaling(records, str(tmp_path / "ibq.png"))
    for path in (speedup, scaling):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200
    assert plot_ibq_scaling([r for r in records if not r["op"].startswith("ibq")], str(tmp_path / "x.png")) is None
    assert sorted(write_plots(records, str(tmp_path / "all"), "cpu")) == [
        str(tmp_path / "all" / "cpu_ibq_vs_codebook.png"), str(tmp_path / "all" / "cpu_speedup.png")]


def _tiny_suite(device="cpu", dtypes=(torch.float32,), quick=False, model="default"):
    """A suite of the real shape (run -> records through the harness) on a tensor small enough for a test."""
    x = torch.randn(8, 8, device=device, requires_grad=True)
    records = []
    for impl, fn in (("fast", lambda: x * 2), ("reference", lambda: x + x)):
        m = measure(fn, lambda: fn().sum().backward(), device=device, warmup=0, repeats=2)
        records.append(make_record("double", impl, device, torch.float32, {"x": [8, 8], "model": model}, m))
    return records


@pytest.fixture
def tiny_suite(monkeypatch):
    import sys
    import types

    from dcae_ext.commands import bench

    module = types.ModuleType("tiny_bench_suite")
    module.run = _tiny_suite
    monkeypatch.setitem(sys.modules, "tiny_bench_suite", module)
    monkeypatch.setitem(bench.SUITES, "dcae", "tiny_bench_suite")


def test_bench_command_prints_the_table_appends_and_plots(tmp_path, capsys, tiny_suite):
    from dcae_ext.cli import main

    main(["bench", "--ops", "dcae", "--model", "f32c32", "--device", "cpu", "--quick", "--results-dir", str(tmp_path),
          "--plots-dir", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    assert "[dcae] on cpu" in printed and "double" in printed and "f32c32" in printed
    lines = [json.loads(line) for line in open(tmp_path / "cpu.jsonl")]
    assert lines and all(SCHEMA <= set(line) and line["quick"] is True for line in lines)
    assert (tmp_path / "plots" / "cpu_speedup.png").stat().st_size > 1000


def test_bench_command_rejects_unknown_suites_and_a_stray_model():
    from dcae_ext.cli import main

    with pytest.raises(SystemExit, match="unknown"):
        main(["bench", "--ops", "nope", "--no-save"])
    with pytest.raises(SystemExit, match="dcae"):
        main(["bench", "--ops", "shortcuts", "--model", "f32c32", "--no-save"])
