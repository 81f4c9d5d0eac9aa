"""The harness: records from cases, the limit fraction, out of memory, every suite's cases."""
import importlib

import pytest
import torch

from dcae_ext.bench import harness, hardware, timing
from dcae_ext.bench.harness import Case, Work, Workload, measure_case, run_cases
from dcae_ext.bench.records import SCHEMA
from dcae_ext.bench.timing import Timing
from dcae_ext.commands.bench import SUITES

FEW_BLOCKS = Timing(warmup=1, min_blocks=3, max_blocks=3)
KEYS = {"schema", "op", "impl", "device", "device_name", "dtype", "shape", "fwd_ms", "fwdbwd_ms", "peak_mem_mb",
        "oom", "noisy", "fwd_spread", "fwdbwd_spread", "torch", "cuda", "date", "cpu_threads", "load_1min"}


def _case(work=None, reference=None):
    x = torch.randn(64, 64, requires_grad=True)

    def build(device, dtype):
        return {"fast": Workload(lambda: x * 2, (x,), (torch.ones_like(x),)),
                "reference": reference or Workload(lambda: x + x, (x,), (torch.ones_like(x),))}

    return Case("double", {"x": [64, 64]}, build, work, extra={"note": "tiny"})


def test_records_carry_the_schema_the_spread_and_the_extras():
    records = run_cases([_case()], "cpu", [torch.float32], FEW_BLOCKS)
    assert [r["impl"] for r in records] == ["fast", "reference"]
    for record in records:
        assert KEYS <= set(record) and record["schema"] == SCHEMA and record["note"] == "tiny"
        assert record["fwd_ms"] > 0 and record["fwdbwd_ms"] > 0 and record["oom"] is False
        for phase in ("fwd", "fwdbwd"):
            spread = record[f"{phase}_spread"]
            assert spread["min_ms"] <= spread["q1_ms"] <= spread["median_ms"] <= spread["q3_ms"] <= spread["max_ms"]
            assert spread["median_ms"] == record[f"{phase}_ms"] and spread["blocks"] == 3
        assert "limit_gbps" not in record  # no Work given: no limit


def test_fraction_of_limit_is_work_over_median_time_over_the_datasheet_limit(monkeypatch):
    monkeypatch.setattr(hardware, "datasheet_limit", lambda name, kind, dtype: 100.0)  # GB/s
    medians = {"fwd": 2.0, "fwdbwd": 5.0}  # ms, from a fake timing
    monkeypatch.setattr(harness, "time_interleaved", lambda fns, device, settings: (
        {name: timing.Stats((medians["fwdbwd" if "backward" in fn.__name__ else "fwd"],) * 3, 1)
         for name, fn in fns.items()}, set()))
    monkeypatch.setattr(harness.hardware, "device_name", lambda device: "fake")
    records = measure_case(_case(Work("memory", fwd=50e6, fwdbwd=100e6)), torch.device("cpu"), torch.float32,
                           FEW_BLOCKS)
    fast = records[0]
    assert fast["work"] == {"kind": "memory", "unit": "bytes", "fwd": 200e6, "fwdbwd": 400e6}  # float32
    assert fast["fwd_gbps"] == pytest.approx(100.0) and fast["fwd_fraction_of_limit"] == pytest.approx(1.0)
    assert fast["fwdbwd_gbps"] == pytest.approx(80.0) and fast["fwdbwd_fraction_of_limit"] == pytest.approx(0.8)
    assert fast["limit_gbps"] == 100.0 and fast["limit_source"] == "datasheet"


def test_without_a_datasheet_the_limit_is_the_fastest_probes_best_block():
    probes = {"limit: read": (None, 4e9), "limit: copy": (None, 4e9)}
    stats = {"limit: read": timing.Stats((40.0, 50.0, 60.0), 1), "limit: copy": timing.Stats((20.0, 90.0, 95.0), 1)}
    assert harness._probed_limit("memory", probes, stats) == (pytest.approx(200.0), "probe: copy")
    gemm = {"limit: gemm": (None, 2e12)}
    assert harness._probed_limit("matmul", gemm, {"limit: gemm": timing.Stats((1000.0, 1500.0), 1)}) == (
        pytest.approx(2.0), "probe: gemm")


def test_cpu_limits_are_probed_alongside_and_no_fraction_exceeds_one():
    case = _case(Work("memory", fwd=2 * 64 * 64, fwdbwd=4 * 64 * 64))  # x * 2: read x, write out; + read grad, write dx
    for record in measure_case(case, torch.device("cpu"), torch.float32, FEW_BLOCKS):
        assert record["limit_source"] in ("probe: read", "probe: copy") and record["limit_gbps"] > 0
        assert 0 < record["fwd_fraction_of_limit"] < 1.0


def test_out_of_memory_is_a_record_not_a_crash():
    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    fast, reference = measure_case(_case(reference=Workload(out_of_memory, (), ())), torch.device("cpu"),
                                   torch.float32, FEW_BLOCKS)
    assert fast["oom"] is False and fast["fwd_ms"] > 0
    assert reference["oom"] is True and reference["fwd_ms"] is None and reference["peak_mem_mb"] is None


def test_one_implementation_out_of_memory_leaves_the_others_measured():
    # The IBQ sweep's last size: the reference runs out of memory in its forward, a baseline only in
    # its backward; the fast op and the baseline's forward are still timed.
    x = torch.randn(64, 64, requires_grad=True)

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    def fails_with_grad():
        if torch.is_grad_enabled():
            out_of_memory()
        return x * 3

    def build(device, dtype):
        return {"fast": Workload(lambda: x * 2, (x,), (torch.ones_like(x),)),
                "reference": Workload(out_of_memory, (x,), (torch.ones_like(x),)),
                "sdpa": Workload(fails_with_grad, (x,), (torch.ones_like(x),), extra={"sdpa_backend": "MATH"})}

    fast, reference, sdpa = measure_case(Case("triple", {"K": 2**20}, build), torch.device("cpu"), torch.float32,
                                         FEW_BLOCKS)
    assert [r["impl"] for r in (fast, reference, sdpa)] == ["fast", "reference", "sdpa"]
    assert fast["oom"] is False and fast["fwd_ms"] > 0 and fast["fwdbwd_ms"] > 0 and fast["peak_mem_mb"] >= 0
    assert reference["oom"] is True and reference["fwd_ms"] is None and reference["fwdbwd_ms"] is None
    assert sdpa["oom"] is True and sdpa["fwd_ms"] > 0 and sdpa["fwdbwd_ms"] is None and sdpa["peak_mem_mb"] is None
    assert sdpa["sdpa_backend"] == "MATH" and "sdpa_backend" not in fast  # a workload's extra: its record only


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_builds_fast_and_reference_workloads_that_run(name):
    suite = importlib.import_module(SUITES[name])
    cases = suite.cases("cpu", quick=True)
    assert cases and all(isinstance(case, Case) and case.shape for case in cases)
    case = min(cases, key=lambda c: c.work.fwd if c.work else 0)  # the cheapest
    workloads = case.build(torch.device("cpu"), torch.float32)
    assert {"fast", "reference"} <= set(workloads)
    for workload in workloads.values():
        workload.run_forward()
        if workload.inputs:
            grads = workload.run_forward_backward()
            assert len(grads) == len(workload.inputs) and all(g is not None for g in grads)
            assert all(t.grad is None for t in workload.inputs)


def test_a_skipped_implementation_is_recorded_without_running():
    # the VQ suite skips the stock module where its N x K tensors would not fit the CPU (a kernel
    # OOM kill, not an exception): the record says why and holds no measurement
    def never():
        raise AssertionError("a skipped workload ran")

    slow = Timing(warmup=1, min_blocks=2, max_blocks=2)
    case = _case(reference=Workload(never, skip="needs 17 GB"))
    case = Case(case.op, case.shape, case.build, timing=slow)
    fast, reference = run_cases([case], "cpu", [torch.float32], FEW_BLOCKS)
    assert reference["skipped"] == "needs 17 GB" and reference["oom"] is False
    assert reference["fwd_ms"] is None and reference["fwdbwd_ms"] is None and reference["peak_mem_mb"] is None
    assert fast["fwd_ms"] > 0 and "skipped" not in fast
    assert fast["fwd_spread"]["blocks"] == 2  # the case's own timing, not the run's
