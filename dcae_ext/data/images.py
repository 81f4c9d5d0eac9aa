"""Image files: listing a folder or list file, the embedded sample photos, and decoding one image
with a clear error (`UnreadableImageError`) when the file cannot be read."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from dcae_ext.data.modes import to_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Files that ship inside the scikit-image wheel (skimage/data/*); anything fetched by pooch is left out.
EMBEDDED_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                  "ihc.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "color.png",
                  "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png")

_WORKER_TRACEBACK = "\nOriginal Traceback"


class UnreadableImageError(ValueError):
    """An image file that cannot be decoded (truncated, not an image, unsupported format...).

    Raised in a DataLoader worker, it is re-raised in the main process with the worker's traceback
    as its message; the message is cut back to its last line (the path and the reason), and the
    traceback is kept in `worker_traceback`, so a command can print one line."""

    def __init__(self, message: str):
        self.worker_traceback = None
        if _WORKER_TRACEBACK in message:
            self.worker_traceback = message
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class UnreadableImageWarning(UserWarning):
    """An unreadable image was skipped (or stood in for) instead of stopping the run."""


def list_images(source: str, recursive: bool = True) -> list[str]:
    """All images under a folder (sorted; recursively: a flat folder or an ImageFolder class tree),
    or the paths listed one per line in a text file (relative paths are relative to that file).
    The paths are absolute, so that a record of them (an encode index) holds from any directory."""
    source = os.path.abspath(source)
    if os.path.isdir(source):
        if recursive:
            found = _walk_images(source)
        else:
            found = [os.path.join(source, f) for f in os.listdir(source)
                     if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(source, f))]
        found.sort()
    elif os.path.isfile(source):
        found = _read_list_file(source)
    else:
        raise FileNotFoundError(f"argument 'data': {source} is neither a folder nor a list file")
    if not found:
        raise ValueError(f"argument 'data': no images ({', '.join(IMAGE_EXTENSIONS)}) found in {source}")
    return found


def _walk_images(source: str) -> list[str]:
    """The images under `source`, following symlinked folders but entering each real folder once:
    a link back up the tree (data/sub/up -> data) would repeat the tree until the system's
    symlink depth limit (about 40 times), and two such links would never end."""
    found, seen = [], set()
    for root, folders, files in os.walk(source, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in seen:
            folders.clear()
            continue
        seen.add((status.st_dev, status.st_ino))
        folders.sort()  # the first path to a folder reached twice is the same on every run
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _read_list_file(source: str) -> list[str]:
    """The paths of a list file (one a line, relative to its folder); ValueError when the file is
    not one: not text, or none of its first lines names an image (by extension or an existing file)."""
    base = os.path.dirname(source)
    try:
        with open(source, encoding="utf-8-sig") as stream:  # -sig: a byte-order mark is not part of the first path
            lines = [line.strip() for line in stream if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"argument 'data': {source} is a file but not a list of image paths (not text); give a "
                         "folder of images or a text file with one image path a line") from None
    paths = [os.path.join(base, line) for line in lines]
    first = paths[:100]
    if first and not any(path.lower().endswith(IMAGE_EXTENSIONS) or os.path.isfile(path) for path in first):
        raise ValueError(f"argument 'data': {source} is a file but not a list of image paths (its first line, "
                         f"{lines[0][:60]!r}, names no image); give a folder of images or a text file with one "
                         "image path a line")
    return paths


def embedded_image_paths() -> list[str]:
    """The sample photographs bundled with scikit-image (no download)."""
    import skimage.data

    folder = os.path.dirname(skimage.data.__file__)
    paths = [os.path.join(folder, name) for name in EMBEDDED_FILES if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        raise RuntimeError(f"no sample images found in {folder}: is scikit-image installed completely?")
    return paths


def distinct_png_names(paths: list[str]) -> list[str]:
    """One distinct PNG name per input: the stem, or stem_ext where stems collide (a.png, a.jpg)."""
    stems = [os.path.splitext(os.path.basename(p)) for p in paths]
    counts: dict[str, int] = {}
    for stem, _ in stems:
        counts[stem] = counts.get(stem, 0) + 1
    names, taken = [], set()
    for stem, ext in stems:
        base = stem if counts[stem] == 1 else f"{stem}_{ext.lstrip('.').lower()}"
        name, number = f"{base}.png", 1
        while name.lower() in taken:  # a_png.png given as an input too, or a case-insensitive file system
            number += 1
            name = f"{base}_{number}.png"
        taken.add(name.lower())
        names.append(name)
    return names


def inputs_replaced(out: str, names: list[str], inputs: list[str]) -> list[str]:
    """The `inputs` that writing files `names` into folder `out` would replace (symlinked folders
    resolved): a command that writes PNGs next to its sources must not write over them."""
    real_folders: dict[str, str] = {}

    def resolved(path: str) -> str:
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        return os.path.join(real_folders[folder], os.path.basename(path))

    sources = {resolved(path): path for path in inputs}
    return [sources[target] for target in (resolved(os.path.join(out, name)) for name in names) if target in sources]


def open_rgb(path: str) -> Image.Image:
    """The fully decoded image as upright 8-bit RGB, whatever its mode (`modes.to_rgb`: 16-bit and
    float data scaled, EXIF orientation applied); UnreadableImageError naming the path when it
    cannot be read, or its values have no known scale."""
    try:
        with Image.open(path) as image:
            image.load()  # decodes the whole file: truncation shows up here
            return to_rgb(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        reason = str(error) or type(error).__name__
        raise UnreadableImageError(f"cannot read image {path}: {reason}") from None


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Shorter side resized to `resolution` (bicubic, antialiased), then the centre square crop."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def load_image(path: str, resolution: int | None) -> torch.Tensor:
    """(3, H, W) float in [0, 1]: `resize_center_crop` to `resolution`, or the file's own size for None."""
    image = open_rgb(path)
    if resolution is not None:
        image = resize_center_crop(image, resolution)
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
