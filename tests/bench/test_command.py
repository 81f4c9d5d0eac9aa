"""`dcae-ext bench` and the thin benchmarks/bench_<op>.py wrappers; the plots of a run."""
import json
import os
import runpy
import sys
import types

import pytest
import torch
from PIL import Image

from dcae_ext.bench.harness import Case, Workload
from dcae_ext import ops
from dcae_ext.bench.plots import plot_ibq_scaling, plot_speedups, write_plots
from dcae_ext.commands import bench
from dcae_ext.ops import _library

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny_cases(device="cpu", quick=False, model="default"):
    """A suite of the real shape (cases -> workloads) on a tensor small enough for a test."""
    x = torch.randn(8, 8, device=device, requires_grad=True)

    def build(device, dtype):
        return {"fast": Workload(lambda: x * 2, (x,), (torch.ones_like(x),)),
                "reference": Workload(lambda: x + x, (x,), (torch.ones_like(x),))}

    return [Case("double", {"x": [8, 8], "model": model}, build)]


@pytest.fixture
def tiny_suite(monkeypatch):

    module = types.ModuleType("tiny_bench_suite")
    module.cases = _tiny_cases
    monkeypatch.setitem(sys.modules, "tiny_bench_suite", module)
    monkeypatch.setitem(bench.SUITES, "dcae", "tiny_bench_suite")


def test_bench_command_prints_the_table_with_its_spread_appends_and_plots(tmp_path, capsys, tiny_suite):
    from dcae_ext.cli import main

    main(["bench", "--ops", "dcae", "--model", "f32c32", "--device", "cpu", "--quick", "--threads", "1",
          "--results-dir", str(tmp_path), "--plots-dir", str(tmp_path / "plots")])
    printed = capsys.readouterr().out
    assert "[dcae] on cpu" in printed and "double" in printed and "f32c32" in printed
    assert "IQR" in printed and "marks rows above 10%" in printed
    lines = [json.loads(line) for line in open(tmp_path / "cpu.jsonl")]
    assert [line["impl"] for line in lines] == ["fast", "reference"]
    assert all(line["quick"] is True and line["cpu_threads"] == 1 and "fwd_spread" in line for line in lines)
    assert (tmp_path / "plots" / "cpu_speedup.png").stat().st_size > 1000


def test_a_suite_cut_short_keeps_the_cases_it_measured(tmp_path, monkeypatch):

    def cases(device="cpu", quick=False):
        def interrupted(device, dtype):
            raise KeyboardInterrupt  # a Ctrl-C mid-suite; a timeout's kill also leaves the appended lines
        return _tiny_cases(device, quick) + [Case("never", {"x": [1]}, interrupted)]

    module = types.ModuleType("cut_bench_suite")
    module.cases = cases
    monkeypatch.setitem(sys.modules, "cut_bench_suite", module)
    monkeypatch.setitem(bench.SUITES, "shortcuts", "cut_bench_suite")
    with pytest.raises(KeyboardInterrupt):
        bench.run_suites(["shortcuts"], "cpu", [torch.float32], True, str(tmp_path))
    lines = [json.loads(line) for line in open(tmp_path / "cpu.jsonl")]
    assert [(line["op"], line["impl"], line["quick"]) for line in lines] == [("double", "fast", True),
                                                                           ("double", "reference", True)]


def test_suites_run_by_separate_commands_share_the_plots(tmp_path, monkeypatch):
    """benchmarks/run_gpu.sh runs each suite in its own command into one results file: the plots
    show every suite's latest cases (of the run's --quick), not the last command's alone."""
    for name, op in (("shortcuts", "first"), ("linear_attention", "second")):
        module = types.ModuleType(f"{name}_tiny_suite")
        module.cases = lambda device="cpu", quick=False, op=op: [
            Case(op, case.shape, case.build) for case in _tiny_cases(device, quick)]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(bench.SUITES, name, module.__name__)
    plotted = []
    monkeypatch.setattr("dcae_ext.bench.plots.write_plots", lambda records, *rest: plotted.append(records) or [])
    bench.run_suites(["shortcuts"], "cpu", [torch.float32], False, str(tmp_path))
    bench.run_suites(["shortcuts"], "cpu", [torch.float32], True, str(tmp_path))
    bench.run_suites(["linear_attention"], "cpu", [torch.float32], True, str(tmp_path))
    assert sorted({record["op"] for record in plotted[-1]}) == ["first", "second"]
    assert all(record["quick"] for record in plotted[-1]) and len(plotted[-1]) == 4  # fast and reference each


def test_bench_command_rejects_bad_flags():
    from dcae_ext.cli import main

    with pytest.raises(SystemExit, match="unknown"):
        main(["bench", "--ops", "nope", "--no-save"])
    with pytest.raises(SystemExit, match="dcae"):
        main(["bench", "--ops", "shortcuts", "--model", "f32c32", "--no-save"])
    with pytest.raises(SystemExit, match="--threads"):
        main(["bench", "--ops", "shortcuts", "--threads", "0", "--no-save"])


@pytest.mark.parametrize("op", ["shortcuts", "linear_attention", "ibq", "dcae", "vq"])
def test_wrapper_scripts_are_the_command_for_one_suite(op, monkeypatch):

    seen = {}
    monkeypatch.setattr(bench, "run_suites", lambda names, device, dtypes, *args, **kwargs: seen.update(
        names=names, dtypes=dtypes))
    monkeypatch.setattr(sys, "argv", ["bench.py", "--device", "cpu", "--dtype", "bf16", "--no-save"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "benchmarks", f"bench_{op}.py"), run_name="__main__")
    assert exit_info.value.code == 0 and seen == {"names": [op], "dtypes": [torch.bfloat16]}


def test_plots_are_written_as_png(tmp_path, fake_records):
    records = fake_records
    speedup = plot_speedups(records, str(tmp_path / "speedup.png"))
    scaling = plot_ibq_scaling(records, str(tmp_path / "ibq.png"))
    for path in (speedup, scaling):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 200
    assert plot_ibq_scaling([r for r in records if not r["op"].startswith("ibq")], str(tmp_path / "x.png")) is None
    assert sorted(write_plots(records, str(tmp_path / "all"), "cpu")) == [
        str(tmp_path / "all" / "cpu_ibq_vs_codebook.png"), str(tmp_path / "all" / "cpu_speedup.png")]


def test_a_busy_cpu_is_announced(monkeypatch):

    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (6.0, 5.0, 4.0))
    assert "load average 6.0 on 2 cores" in bench._busy_warning("cpu")
    assert bench._busy_warning("cuda") is None
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert bench._busy_warning("cpu") is None


def test_the_ibq_plot_draws_every_implementation_and_marks_what_ran_out_of_memory(monkeypatch, ibq_sweep_records):
    from dcae_ext.bench import plots

    drawn = {}

    def keep(figure, path, dpi):
        drawn["figure"] = figure
        return path

    monkeypatch.setattr(plots, "save_png", keep)
    assert plot_ibq_scaling(ibq_sweep_records, "unused.png") == "unused.png"
    time_axis, memory_axis = drawn["figure"].axes
    for axis in (time_axis, memory_axis):
        lines = {line.get_label(): list(line.get_xdata()) for line in axis.get_lines()}
        assert lines == {"ibq_quantize fused float32 N=8192 D=256": [2**14, 2**16, 2**20],
                         "ibq_quantize reference float32 N=8192 D=256": [2**14, 2**16],
                         "ibq_quantize sdpa float32 N=8192 D=256": [2**14, 2**16, 2**20]}
        assert [text.get_text() for text in axis.texts] == ["quantize reference float32 OOM"]
        assert [label.get_text() for label in axis.get_xticklabels()] == ["16k", "64k", "1024k\nN=16384"]


@pytest.mark.parametrize("setup,words", [
    (lambda monkeypatch: ops.use_reference(True), "reference mode is on"),
    (lambda monkeypatch: monkeypatch.setattr(_library, "WITH_CUDA", False), "built without CUDA kernels"),
    (lambda monkeypatch: monkeypatch.setattr(_library, "LOADED", False), "did not load"),
])
def test_bench_refuses_to_time_the_reference_as_the_fast_side(tmp_path, monkeypatch, setup, words):
    """On a machine whose build lacks the device's kernels (a fresh GPU machine that was not built,
    a CPU-only wheel) or in reference mode, 'fast' would be the reference: about 1.0x, unmarked."""
    device = "cuda" if "CUDA" in words else "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    setup(monkeypatch)  # reference mode is restored by the autouse fixture of tests/conftest.py
    with pytest.raises(SystemExit, match=f"--device {device}: .*{words}.*the 'fast' timings would be the reference"):
        bench.run_suites(["shortcuts"], device, [torch.float32], True, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_the_end_to_end_suite_without_diffusers_is_skipped_with_the_reason(tmp_path, monkeypatch, capsys):
    # diffusers is an optional dependency; `dcae-ext bench` (all suites) used to end in a traceback
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "diffusers"
                        else find_spec(name, *rest))
    assert bench.run_suites(["dcae"], "cpu", [torch.float32], True, str(tmp_path)) == []
    assert "[dcae] skipped: needs diffusers" in capsys.readouterr().out
    assert not os.listdir(tmp_path)


def test_a_suite_with_a_results_kind_writes_its_own_file(tmp_path, monkeypatch):
    module = types.ModuleType("kind_bench_suite")
    module.cases = _tiny_cases
    module.RESULTS_KIND = "vq"
    monkeypatch.setitem(sys.modules, "kind_bench_suite", module)
    monkeypatch.setitem(bench.SUITES, "vq", "kind_bench_suite")
    bench.run_suites(["vq"], "cpu", [torch.float32], True, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["cpu-vq.jsonl", "plots"]
    assert len(open(tmp_path / "cpu-vq.jsonl").readlines()) == 2


def test_the_vq_plot_marks_skipped_implementations(tmp_path):
    from dcae_ext.bench.plots import plot_vq_scaling

    def record(op, impl, n, k, ms=None, skipped=None):
        return {"op": op, "impl": impl, "device": "cpu", "device_name": "x86_64", "dtype": "float32",
                "shape": {"N": n, "K": k, "D": 256}, "fwd_ms": ms, "fwdbwd_ms": ms, "peak_mem_mb": ms,
                "oom": False, "torch": "2.14.1", "date": "2026-12-07T12:00:00+00:00",
                "reference_need_mb": 24.0 * n * k / 2**20,
                **({"skipped": skipped} if skipped else {})}

    records = [record("vq_step", "fast", 16384, k, 10.0 * k / 2**14) for k in (2**14, 2**16)]
    records += [record("vq_step", "reference", 16384, 2**14, 100.0),
                record("vq_step", "reference", 16384, 2**16, skipped="needs 16 GB"),
                record("vq_step", "fast", 512, 2**14, 1.0)]
    path = plot_vq_scaling(records, str(tmp_path / "vq.png"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert plot_vq_scaling([r for r in records if r["op"] == "x"], str(tmp_path / "none.png")) is None
