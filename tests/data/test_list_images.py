"""`list_images` on folders whose symlinks loop back: every image once, in finite time."""
import os

import pytest
from PIL import Image

from dcae_ext.data.images import list_images


def _tree(root):
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a.png")
    Image.new("RGB", (4, 4)).save(root / "sub" / "b.png")
    return root


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_lists_each_image_once(tmp_path):
    root = _tree(tmp_path / "data")
    os.symlink("..", root / "sub" / "up")  # sub/up -> data: followed, it would repeat the tree ~40 times
    assert list_images(str(root)) == [str(root / "a.png"), str(root / "sub" / "b.png")]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_two_symlink_loops_end(tmp_path):
    # sub/up -> data and sub2 -> sub: walked naively, 2^40 paths (the walk never ends in practice)
    root = _tree(tmp_path / "data")
    os.symlink("..", root / "sub" / "up")
    os.symlink("sub", root / "sub2")
    assert list_images(str(root)) == [str(root / "a.png"), str(root / "sub" / "b.png")]


def test_symlinked_class_folders_are_listed(tmp_path):
    # an ImageFolder tree whose class folders are links to folders outside it is listed through them
    store = _tree(tmp_path / "store")
    root = tmp_path / "tree"
    root.mkdir()
    os.symlink(store / "sub", root / "cats")
    assert list_images(str(root)) == [str(root / "cats" / "b.png")]


def test_list_file_with_a_byte_order_mark(tmp_path):
    # Windows editors save "UTF-8" text with a BOM: it must not become part of the first path
    root = _tree(tmp_path / "data")
    (root / "list.txt").write_text("a.png\r\nsub/b.png\r\n", encoding="utf-8-sig")
    assert list_images(str(root / "list.txt")) == [str(root / "a.png"), str(root / "sub" / "b.png")]
