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




def cli_error(argv, capsys) -> str:
    """The one-line error of a failing `dcae-ext` command: its SystemExit message, or what the CLI
    printed before returning a non-zero status."""
    from dcae_ext.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:
        return str(exit.code)
    assert code != 0, f"{argv} succeeded"
    return capsys.readouterr().err
