"""`dcae-ext tokenize`: a folder (or list) of images -> IBQ code grids (int32) in safetensors shards,
with an index and metadata, for autoregressive training (`dcae_ext.data.TokenDataset` reads it back).
Resumable (run the same command again), and under torchrun each rank takes a share of the shards."""
from __future__ import annotations

from dcae_ext.commands.encode import add_arguments, run_encoding


def add_parser(subparsers):
    parser = subparsers.add_parser("tokenize", help="tokenize an image dataset with an IBQ tokenizer "
                                                    "(int32 code grids in safetensors shards)", description=__doc__)
    add_arguments(parser, "tokens")
    return parser


def run(args) -> int:
    return run_encoding(args, "tokens")
