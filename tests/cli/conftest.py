"""Quick training settings over two small images, shared by the CLI tests (decoding the bundled sample
photos costs seconds)."""
import json

import pytest
from PIL import Image

QUICK = {"steps": 1, "batch_size": 1, "resolution": 16, "lpips_weight": 0.0, "num_workers": 0,
         "device": "cpu", "image_every": 0}


@pytest.fixture
def data(tmp_path):
    """A folder of two 24 x 24 images."""
    folder = tmp_path / "data"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (24, 24), (40 * index, 100, 200)).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def settings(tmp_path, data):
    """A `--config` file: one step at 16 pixels on `data`, no LPIPS, no workers, CPU."""
    path = tmp_path / "quick.json"
    path.write_text(json.dumps(dict(QUICK, data=str(data))))
    return str(path)
