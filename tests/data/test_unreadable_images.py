"""One unreadable image (truncated PNG, text named .jpg) must not stop training, eval or
reconstruct: it is skipped with a counted warning, or with --strict-data stops the run in one line."""
import json
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from dcae_ext.cli import main
from dcae_ext.data.images import UnreadableImageError, UnreadableImageWarning, list_images, open_rgb
from dcae_ext.models.dcae.config import DCAEConfig
from dcae_ext.models.dcae.model import DCAE
from dcae_ext.train.config import make_config
from dcae_ext.train.data import CropDataset
from dcae_ext.train.trainer import Trainer

from data_helpers import BAD, cli_error


def test_open_rgb_names_the_file_and_the_reason(corrupt_folder):
    for name in BAD:
        with pytest.raises(UnreadableImageError, match=name):
            open_rgb(str(corrupt_folder / name))
    assert open_rgb(str(corrupt_folder / "a.png")).size == (48, 40)


def _crops(corrupt_folder, strict=False):
    return CropDataset(list_images(str(corrupt_folder)), 16, seed=1, strict=strict)


def test_crop_dataset_stands_in_the_next_readable_image(corrupt_folder):
    dataset = _crops(corrupt_folder)
    names = [os.path.basename(p) for p in dataset.paths]
    assert names == ["a.jpg", "a.png", "c.png", "half.png", "notes.jpg"]
    keys = [5 * 3 + i for i in range(5)]  # epoch 3: the keys a resumed run would draw
    with pytest.warns(UnreadableImageWarning) as caught:
        samples = [dataset[k] for k in keys]
    assert len(caught) == 2 and "1 unreadable so far" in str(caught[0].message)
    assert "2 unreadable so far" in str(caught[1].message)
    # half.png and notes.jpg -> a.jpg (the next readable, wrapping around), each with its own key's crop
    stand_ins = CropDataset([dataset.paths[i] for i in (0, 1, 2, 0, 0)], 16, seed=1)
    for key, sample in zip(keys, samples):
        torch.testing.assert_close(sample, stand_ins[key], rtol=0, atol=0)
    # a fresh process (a resumed run) that never met the bad files draws the same samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        fresh = _crops(corrupt_folder)
        for key, sample in zip(reversed(keys), reversed(samples)):
            torch.testing.assert_close(fresh[key], sample, rtol=0, atol=0)


def test_cached_crop_dataset_skips_at_load(corrupt_folder):
    with pytest.warns(UnreadableImageWarning):
        dataset = CropDataset(list_images(str(corrupt_folder)), 16, cache=True)
    assert dataset[3].shape == (3, 16, 16)


def test_loader_workers_skip_or_raise_one_line(corrupt_folder):
    loader = DataLoader(_crops(corrupt_folder), batch_size=5, num_workers=2)
    assert next(iter(loader)).shape == (5, 3, 16, 16)
    strict = DataLoader(_crops(corrupt_folder, strict=True), batch_size=5, num_workers=2)
    with pytest.raises(UnreadableImageError) as caught:
        next(iter(strict))
    assert str(caught.value).startswith("cannot read image ") and "\n" not in str(caught.value)
    assert os.path.basename(str(caught.value).split(":")[0]) in BAD
    assert "Traceback" in caught.value.worker_traceback


def _micro_dcae():
    torch.manual_seed(0)
    return DCAE(DCAEConfig(latent_channels=4, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
                           encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                           encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
                           decoder_norm_types="rms_norm", decoder_act_fns="silu"))


@pytest.mark.filterwarnings("ignore::dcae_ext.data.images.UnreadableImageWarning")
def test_training_on_a_folder_with_bad_files_resumes_exactly(corrupt_folder, tmp_path):
    def config(out, **extra):
        return make_config("dcae", steps=4, batch_size=2, resolution=16, out=str(out), data=str(corrupt_folder),
                           device="cpu", lpips_weight=0.0, log_every=1, checkpoint_every=2, image_every=0,
                           **extra)

    straight = Trainer(config(tmp_path / "a", num_workers=0), model=_micro_dcae())
    straight.train()
    first = Trainer(config(tmp_path / "b", num_workers=0), model=_micro_dcae())
    first.train(until=2)
    resumed = Trainer(config(tmp_path / "b", num_workers=0), model=_micro_dcae())
    resumed.train(resume=True)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(UnreadableImageError, match="cannot read image"):
        Trainer(config(tmp_path / "c", num_workers=2, strict_data=True), model=_micro_dcae()).train()


def test_eval_skips_and_counts_unreadable_images(corrupt_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", "tiny", "--data", str(corrupt_folder), "--resolution", "16", "--batch-size", "2",
            "--workers", "2", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    document = json.loads((out / "eval.json").read_text())
    assert document["metrics"]["num_images"] == 3
    assert sorted(os.path.basename(s["path"]) for s in document["skipped"]) == sorted(BAD)
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--strict-data: cannot read image .*half.png"):
        main(args + ["--strict-data"])


def test_reconstruct_skips_bad_files_and_keeps_colliding_stems(corrupt_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", "--model", "tiny", "--input", str(corrupt_folder), "--out", str(out),
                 "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["a_jpg.png", "a_png.png", "c.png"]
    from PIL import Image
    assert Image.open(out / "a_png.png").size == (48, 40) and Image.open(out / "a_jpg.png").size == (32, 36)
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [(["--tile", "12"], "--tile"), (["--strict-data"], "--strict-data"),
                                            (["--device", "cdua"], "--device"), (["--model", "nope"], "--model")])
def test_reconstruct_validates_before_writing(corrupt_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["reconstruct", "--model", "tiny", "--input", str(corrupt_folder), "--out", str(out), "--device", "cpu",
            *extra]  # a flag given twice: argparse keeps the last
    assert message in cli_error(argv, capsys)
    assert not out.exists() or os.listdir(out) == []
