"""The diffusers suite races stock diffusers models against accelerated copies of the same weights."""
import json

import pytest
import torch

pytest.importorskip("diffusers")

from dcae_ext.bench import diffusers_models as suite  # noqa: E402
from dcae_ext.integrations.diffusers import is_accelerated  # noqa: E402


def test_quick_cases_race_the_same_computation_stock_against_accelerated():
    cases = suite.cases("cpu", quick=True)
    assert {c.op for c in cases} == {"diffusers_sana_transformer", "diffusers_dcae_decode"}
    for case in cases:
        workloads = case.build(torch.device("cpu"), torch.float32)
        fast, reference = workloads["fast"], workloads["reference"]
        models = suite_models(fast), suite_models(reference)
        assert is_accelerated(models[0]) and not is_accelerated(models[1]), case.op
        want = reference.run_forward()
        torch.testing.assert_close(fast.run_forward(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def suite_models(workload):
    """The model a workload's closure calls (the first torch module among its free variables)."""
    closure = workload.forward.__closure__ or ()
    for cell in closure:
        if isinstance(cell.cell_contents, torch.nn.Module):
            return cell.cell_contents
    raise AssertionError("no model in the workload")


def test_the_cpu_plan_is_the_reduced_sana_layer_and_sanas_vae():
    cases = suite.cases("cpu", quick=False)
    shapes = [(c.op, c.shape) for c in cases]
    assert ("diffusers_sana_transformer", {"model": "sana-1600m-layer-w256-2l", "batch": 1, "tokens": 1024}) in shapes
    assert ("diffusers_sana_transformer", {"model": "sana-1600m-layer-w256-2l", "batch": 1, "tokens": 4096}) in shapes
    assert [s["resolution"] for op, s in shapes if op == "diffusers_dcae_decode"] == [256]
    assert all(s.get("model") == suite.VAE_MODEL for op, s in shapes if op == "diffusers_dcae_decode")


def test_records_go_to_their_own_results_file(tmp_path):
    from dcae_ext.commands.bench import run_suites

    run_suites(["diffusers"], "cpu", [torch.float32], True, str(tmp_path), plots_dir=str(tmp_path / "plots"))
    records = [json.loads(line) for line in (tmp_path / "cpu-diffusers.jsonl").read_text().splitlines()]
    assert {r["impl"] for r in records} == {"fast", "reference"}
    assert not (tmp_path / "cpu.jsonl").exists()
    assert (tmp_path / "plots" / "cpu-diffusers_speedup.png").exists()
