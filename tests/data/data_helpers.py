"""Shared by the data tests: small smooth images, and the names of the broken files in `corrupt_folder`."""
import torch
from PIL import Image

BAD = ("half.png", "notes.jpg")  # a truncated PNG, a text file named .jpg


def write_image(path, height, width, seed):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    pixels = (smooth[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


