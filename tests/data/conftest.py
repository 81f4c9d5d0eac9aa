import pytest

from data_helpers import write_image


@pytest.fixture
def corrupt_folder(tmp_path):
    """a.png, a.jpg (colliding stems), c.png readable; half.png truncated; notes.jpg is text."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_image(folder / "a.png", 40, 48, 0)
    write_image(folder / "a.jpg", 36, 32, 1)
    write_image(folder / "c.png", 48, 40, 2)
    write_image(tmp_path / "whole.png", 64, 64, 3)
    data = (tmp_path / "whole.png").read_bytes()
    (folder / "half.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not a picture\n")
    return folder
