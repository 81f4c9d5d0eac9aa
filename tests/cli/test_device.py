"""--device: one reading (choose_device) for encode, tokenize, decode, reconstruct, eval and bench.
`cuda` (and no value, on a GPU machine) is this process's GPU, cuda:LOCAL_RANK, so a torchrun rank
uses its own GPU and torch.cuda.set_device gets an index. train and demo take cpu, cuda or auto
(train/distributed.py places a torchrun rank on cuda:LOCAL_RANK the same way)."""
import pytest
import torch

from dcae_ext.cli import main
from dcae_ext.commands import _options
from dcae_ext.commands._options import choose_device


@pytest.mark.parametrize("value,local_rank,gpus,expected", [
    ("cpu", 0, 2, "cpu"),
    ("cuda", 0, 1, "cuda:0"),
    ("cuda", 1, 2, "cuda:1"),
    ("cuda:0", 1, 2, "cuda:0"),  # an explicit index wins over the rank
    (None, 1, 2, "cuda:1"),
    ("auto", 1, 2, "cuda:1"),
    (None, 1, 0, "cpu"),
    ("auto", 0, 0, "cpu"),
])
def test_device_choice(value, local_rank, gpus, expected):
    device = choose_device(value, local_rank, cuda_count=gpus)
    assert device == torch.device(expected)
    assert device.type == "cpu" or device.index is not None


def test_cuda_without_index_takes_local_rank_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert choose_device("cuda", cuda_count=4) == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert choose_device("cuda", cuda_count=4) == torch.device("cuda", 0)


@pytest.mark.parametrize("value,local_rank,gpus,message", [
    ("gpu", 0, 1, "--device gpu: not a device"),
    ("cuda", 0, 0, "--device cuda: no CUDA GPU is visible"),
    ("cuda:2", 0, 2, "--device cuda:2: only 2 CUDA device"),
    ("cuda", 2, 2, "LOCAL_RANK 2 but only 2 CUDA device"),
])
def test_bad_devices_name_the_flag(value, local_rank, gpus, message):
    with pytest.raises(SystemExit, match=message):
        choose_device(value, local_rank, cuda_count=gpus)


def test_encode_device_cuda_sets_the_rank_gpu(tmp_path, monkeypatch):
    """`dcae-ext encode --device cuda` on rank 1 of a torchrun job: set_device gets cuda:1 (it refused
    an index-less device, so the command failed on every GPU machine)."""
    from PIL import Image

    from dcae_ext.encode import ranks

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    chosen = []

    def set_device(device):
        chosen.append(device)
        raise RuntimeError("stop here: no GPU in this test")

    monkeypatch.setattr(_options, "visible_gpus", lambda: 2)
    monkeypatch.setattr(ranks, "join", lambda: ranks.Ranks(local_rank=1))
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["encode", "--model", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
              "--device", "cuda", "--debug"])
    assert chosen == [torch.device("cuda", 1)]


def test_bench_device_cuda_index_becomes_the_current_gpu(monkeypatch, capsys):
    """`dcae-ext bench --device cuda:1`: the suites place their tensors on "cuda", so cuda:1 must become
    the current device before they run (the flag used to accept only cpu and cuda)."""
    from dcae_ext.commands import bench

    chosen, ran = [], []
    monkeypatch.setattr(_options, "visible_gpus", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(bench, "run_suites", lambda names, device, *rest, **options: ran.append(device))
    assert main(["bench", "--ops", "shortcuts", "--device", "cuda:1", "--no-save"]) == 0
    assert chosen == [torch.device("cuda", 1)] and ran == ["cuda"]
    assert main(["bench", "--ops", "shortcuts", "--device", "cuda:2", "--no-save"]) == 2
    assert "--device cuda:2: only 2 CUDA device(s) are visible" in capsys.readouterr().err


def test_eval_device_names_the_flag(monkeypatch, capsys):
    monkeypatch.setattr(_options, "visible_gpus", lambda: 0)
    assert main(["eval", "--model", "tiny", "--device", "cuda:0"]) == 2
    assert "--device cuda:0: no CUDA GPU is visible" in capsys.readouterr().err
