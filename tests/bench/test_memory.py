"""Peak memory from a clean baseline: the inputs alone, no gradient of an earlier run, no profiler."""
import subprocess
import sys

import pytest
import torch

from dcae_ext.bench.harness import Workload, measure_case, Case
from dcae_ext.bench.memory import peak_mb
from dcae_ext.bench.timing import Timing

MIB = 2**20


def test_peak_of_a_known_allocation():
    def allocate():
        return torch.empty(4 * MIB // 4).fill_(1.0)

    allocate()  # warm, as after the timed runs: a first call also maps library code into the process
    assert peak_mb(allocate, "cpu") == pytest.approx(4.0, abs=0.5)
    assert peak_mb(lambda: None, "cpu") < 0.5


def test_the_first_measurement_in_a_process_does_not_count_the_profiler_starting():
    # The profiler's first start maps about 150 MB; a resident-size window around it reported that
    # as the peak of the first case of every run.
    code = "from dcae_ext.bench.memory import peak_mb; print(peak_mb(lambda: None, 'cpu'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) < 1.0


def _doubling_case(x, built):
    def build(device, dtype):
        built.append(x)
        return {"fast": Workload(lambda: x * 2, (x,), (torch.ones_like(x),)),
                "reference": Workload(lambda: x + x, (x,), (torch.ones_like(x),))}
    return Case("double", {"x": list(x.shape)}, build)


def test_forward_backward_peak_counts_output_and_gradient_and_leaves_no_grad_behind():
    x = torch.randn(MIB // 4, requires_grad=True)  # 1 MiB
    records = measure_case(_doubling_case(x, []), torch.device("cpu"), torch.float32,
                           Timing(warmup=1, min_blocks=3, max_blocks=3))
    for record in records:
        assert record["peak_mem_mb"] == pytest.approx(2.0, abs=0.3)  # the output and dx, 1 MiB each
    assert x.grad is None  # timed runs and the peak run use autograd.grad: no .grad to free later


def test_a_stale_grad_is_neither_freed_inside_the_measured_call_nor_counted():
    x = torch.randn(MIB // 4, requires_grad=True)
    stale = torch.full_like(x, 7.0)
    x.grad = stale  # e.g. left by a training step before the benchmark
    records = measure_case(_doubling_case(x, []), torch.device("cpu"), torch.float32,
                           Timing(warmup=1, min_blocks=3, max_blocks=3))
    assert x.grad is stale and torch.equal(stale, torch.full_like(x, 7.0))
    assert all(r["peak_mem_mb"] == pytest.approx(2.0, abs=0.3) for r in records)
