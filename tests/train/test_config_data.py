import json
import os

import pytest
import torch
from PIL import Image

from dcae_ext.train.config import PHASE_TRAINABLE, make_config
from dcae_ext.train.data import CropDataset, ResumableSampler, build_dataset, list_images
from dcae_ext.train.trainer import lr_factor


def test_config_precedence_recipe_file_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.001\nbatch_size: 3\ndisc_betas: [0.4, 0.8]\n")
    config = make_config("dcae", phase=3, file=str(path), batch_size=5, steps=None)
    assert config.lr == 0.001 and config.batch_size == 5 and config.disc_betas == (0.4, 0.8)
    assert config.gan_weight == 0.5 and config.trainable == PHASE_TRAINABLE[3] and config.steps == 1000
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"model": "ibq"}))
    ibq = make_config(file=str(json_path))
    assert ibq.model == "ibq" and ibq.betas == (0.5, 0.9) and ibq.lecam_weight == 0.05 and ibq.gan_weight == 0.1


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="unknown config option"):
        make_config("dcae", learning_rate=1.0)
    with pytest.raises(ValueError, match="'phase'"):
        make_config("dcae", phase=4)
    with pytest.raises(ValueError, match="'phase'"):
        make_config("ibq", phase=2)
    with pytest.raises(ValueError, match="'precision'"):
        make_config("dcae", precision="fp8")


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def _write_images(folder, names, size=(40, 30)):
    for name in names:
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        Image.new("RGB", size, (10, 200, 30)).save(folder / name)


def test_image_sources_folder_tree_and_list(tmp_path):
    _write_images(tmp_path / "flat", ["a.png", "b.jpg"])
    _write_images(tmp_path / "tree", ["cat/x.png", "dog/y.png", "dog/z.webp"])
    (tmp_path / "tree" / "notes.txt").write_text("not an image")
    assert len(list_images(str(tmp_path / "flat"))) == 2
    assert len(list_images(str(tmp_path / "tree"))) == 3
    (tmp_path / "list.txt").write_text("flat/a.png\ntree/dog/y.png\n")
    assert [os.path.basename(p) for p in list_images(str(tmp_path / "list.txt"))] == ["a.png", "y.png"]
    with pytest.raises(FileNotFoundError, match="'data'"):
        list_images(str(tmp_path / "missing"))


def test_image_paths_are_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    _write_images(tmp_path / "flat", ["a.png"])
    monkeypatch.chdir(tmp_path)
    assert list_images("flat") == [str(tmp_path / "flat" / "a.png")]


def test_crops_are_deterministic_in_range_and_upscale_small_images(tmp_path):
    _write_images(tmp_path, ["small.png"], size=(20, 12))
    dataset = CropDataset(list_images(str(tmp_path)), 16, seed=3)
    a, b = dataset[5], dataset[5]
    assert a.shape == (3, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


def test_embedded_images_need_no_download():
    dataset = build_dataset(None, 32)
    assert len(dataset.paths) >= 8 and len(dataset) == 64 * len(dataset.paths)
    crops = torch.stack([dataset[i] for i in range(4)])
    assert crops.shape == (4, 3, 32, 32) and crops.std() > 0.05


def test_sampler_resumes_mid_epoch_and_shards_like_distributed_sampler():
    data = list(range(10))
    full = ResumableSampler(data, seed=1)
    stream = iter(full)
    keys = [next(stream) for _ in range(25)]  # crosses two epoch boundaries
    assert sorted(k % 10 for k in keys[:10]) == data and keys[10] // 10 == 1
    resumed = ResumableSampler(data, seed=1)
    resumed.start(epoch=1, skip=3)
    stream = iter(resumed)
    assert [next(stream) for _ in range(12)] == keys[13:25]
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=1) for r in range(2)]
    first = [next(iter(s)) for s in ranks]
    assert sorted(first) == sorted(keys[:2])
