"""`decode`: shards back to images (PNG), with the PSNR of each against its source image prepared
as the encoder saw it (the same resize and crop), by dcae_ext.data.psnr as `dcae-ext eval` does."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from dcae_ext.data.datasets import open_encoded
from dcae_ext.data.images import UnreadableImageError, distinct_png_names, inputs_replaced, load_image
from dcae_ext.data.psnr import psnr_per_image, save_png, to_unit
from dcae_ext.encode.codecs import Codec


@dataclass
class DecodeSummary:
    images: int = 0
    psnr: list = field(default_factory=list)   # per image with a readable source, dB
    missing_sources: int = 0

    @property
    def mean_psnr(self) -> float | None:
        return sum(self.psnr) / len(self.psnr) if self.psnr else None


def _runs(dataset, count: int, batch_size: int):
    """Consecutive items of equal shape, at most batch_size each: (first, stop) pairs."""
    first = 0
    while first < count:
        stop = first + 1
        shape = dataset.records[first]["shape"]
        while stop < count and stop - first < batch_size and dataset.records[stop]["shape"] == shape:
            stop += 1
        yield first, stop
        first = stop


def decode_dataset(codec: Codec, root: str, out: str, *, batch_size: int = 8, limit: int | None = None,
                   compare: bool = True, on_image: Callable[[str, float | None], None] | None = None) -> DecodeSummary:
    """Decode the first `limit` items of the encoded dataset in `root` to PNGs in `out`."""
    if limit is not None and limit < 0:
        raise ValueError(f"argument 'limit': expected >= 0 images, got {limit}")
    dataset = open_encoded(root)
    if dataset.kind != codec.kind:
        raise ValueError(f"argument 'codec': {root} holds {dataset.kind}, the model makes {codec.kind}")
    resolution = dataset.metadata["plan"]["resolution"]
    count = len(dataset) if limit is None else min(limit, len(dataset))
    sources = [record["path"] for record in dataset.records]
    names = distinct_png_names(sources)
    replaced = inputs_replaced(out, names[:count], sources)
    if replaced:
        raise ValueError(f"argument 'out': decoding into {out} would replace the source image {replaced[0]}"
                         f"{f' and {len(replaced) - 1} more' if len(replaced) > 1 else ''}; choose another folder")
    os.makedirs(out, exist_ok=True)
    summary = DecodeSummary()
    for first, stop in _runs(dataset, count, batch_size):
        codes = torch.stack([dataset.stored(i) for i in range(first, stop)]).to(codec.device)
        images = to_unit(codec.decode(codes)).cpu()
        for offset, image in enumerate(images):
            record = dataset.records[first + offset]
            image = codec.crop(image, dataset.image_size(first + offset))  # drops the padding (models.padding)
            save_png(image, os.path.join(out, names[first + offset]))
            score = None
            if compare:
                try:
                    score = float(psnr_per_image(image[None], load_image(record["path"], resolution)[None]))
                    summary.psnr.append(score)
                except UnreadableImageError:  # moved or deleted since it was encoded
                    summary.missing_sources += 1
            summary.images += 1
            if on_image:
                on_image(names[first + offset], score)
    return summary
