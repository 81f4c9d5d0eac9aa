"""benchmarks/run_gpu.sh, rehearsed on the CPU (DEVICE=cpu, the build that is here): a GPU session
has about 15 device minutes, so a broken step or a call that overruns its budget costs the session
its measurements. Each call runs its steps under one deadline, skips what no longer fits, and
packs all it wrote into one archive (at most 8 files come back from the GPU machine)."""
import json
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "run_gpu.sh")


def _run(tmp_path, *steps, **env):
    settings = dict(os.environ, OUT=str(tmp_path / "out"), DEVICE="cpu", SKIP_BUILD="1", PYTHON=sys.executable,
                    TEST_MARK="not cuda", TEST_PATHS="tests/cli/test_info.py", BENCH_PLAN="shortcuts:fp32:90",
                    BENCH_FLAGS="--quick", TRAIN_PLAN="90 --preset dcae:tiny --batch-size 2",
                    TRAIN_FLAGS="--resolution 32 --precision fp32 --steps 1 --warmup 0 --rounds 1 --threads 1")
    settings.update(env)
    return subprocess.run(["bash", SCRIPT, *steps], cwd=ROOT, env=settings, capture_output=True, text=True,
                          timeout=300)


def _archive(tmp_path, name):
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == [name]  # one file comes back, whatever the steps wrote
    with tarfile.open(out / name) as archive:
        return {member.name: archive.extractfile(member).read().decode("utf-8", "replace")
                for member in archive.getmembers() if member.isfile() and not member.name.endswith(".png")}


@pytest.mark.slow
def test_a_call_runs_its_steps_and_packs_what_they_wrote(tmp_path):
    result = _run(tmp_path, "build-test", "bench", "train")
    assert result.returncode == 0, result.stdout + result.stderr
    files = _archive(tmp_path, "gpu-build-test_bench_train.tar.gz")
    assert {"info.txt", "tests.log", "bench.log", "cpu.jsonl", "train.jsonl", "train.log"} <= set(files), files.keys()
    assert "skipped.txt" not in files
    assert "compiled backends" in files["info.txt"] and "passed" in files["tests.log"]
    bench = [json.loads(line) for line in files["cpu.jsonl"].splitlines()]
    assert {record["op"] for record in bench} == {"pixel_unshuffle_mean", "pixel_shuffle_repeat"}
    train = [json.loads(line) for line in files["train.jsonl"].splitlines()]
    assert {record.get("impl") for record in train} >= {"fast", "reference"}, train


def test_steps_that_no_longer_fit_the_budget_are_skipped_and_listed(tmp_path):
    result = _run(tmp_path, "test", "bench-ibq", "train", BUDGET_S="40", BENCH_PLAN="ibq:fp32:60")
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = _archive(tmp_path, "gpu-test_bench-ibq_train.tar.gz")["skipped.txt"].splitlines()
    assert [line.split(": ")[0] for line in skipped] == [
        "skipped test", "skipped bench ibq", "skipped train --preset dcae:tiny --batch-size 2"]


def test_an_unknown_step_is_refused_before_anything_runs(tmp_path):
    result = _run(tmp_path, "build-test", "benchmark")
    assert result.returncode == 2 and "got benchmark" in result.stderr
    assert not os.listdir(tmp_path / "out")


@pytest.mark.slow
def test_the_diffusers_step_rehearses_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    result = _run(tmp_path, "bench-diffusers", BENCH_PLAN="diffusers:fp32:150", PROFILE_DTYPE="fp32",
                  PROFILE_RESOLUTION="64")
    assert result.returncode == 0, result.stdout + result.stderr
    files = _archive(tmp_path, "gpu-bench-diffusers.tar.gz")
    assert "64 px" in files["decode-profile.txt"] and "decoder convolutions alone" in files["decode-profile.txt"]
    records = [json.loads(line) for line in files["cpu-diffusers.jsonl"].splitlines()]
    assert {r["op"] for r in records} == {"diffusers_sana_transformer", "diffusers_dcae_decode"}
    assert {r["impl"] for r in records} == {"fast", "reference"}
