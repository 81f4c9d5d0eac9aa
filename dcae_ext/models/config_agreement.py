"""A config given to a loader (`config=`, `--config`) against the config.json saved beside the weights.

Models whose weights have the same names and shapes (DC-AE 1.1 and 1.5; an IBQ tokenizer with another
activation or loss setting) would load into the other model without a complaint, so a given config
that builds another model than the saved one is refused, naming the fields."""
from __future__ import annotations


def refuse_contradiction(given_name: str | None, differences: list[tuple[str, object, object]], source) -> None:
    """ValueError naming up to four of `differences` ((field, given, saved)); nothing when there are none."""
    if not differences:
        return
    shown = "; ".join(f"{name}: given {mine!r}, saved {theirs!r}" for name, mine, theirs in differences[:4])
    raise ValueError(f"argument 'config': {given_name or 'the given config'} contradicts {source} "
                     f"({shown}{'; ...' if len(differences) > 4 else ''}); leave out config (--config) to load "
                     "the model that was saved")
