"""A run's output folder: whether it holds a run, refusing or clearing it, and tidying it for a resume."""
from __future__ import annotations

import json
import os
import shutil

from dcae_ext.files import atomic_write, remove_stale_temporaries
from dcae_ext.models.formats.training_run import TRAINING_CHECKPOINT

CHECKPOINT_NAME = TRAINING_CHECKPOINT
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
# What a run that trained leaves behind (a config.json alone is a run that never took a step).
RUN_EVIDENCE = (CHECKPOINT_NAME, METRICS_NAME, "model", "model_ema")
RUN_OUTPUTS = RUN_EVIDENCE + (CONFIG_NAME, "loss_curve.png", "images")


class RunExistsError(ValueError):
    """A new run was asked for in a folder that holds an earlier one."""


def run_files(out: str) -> list[str]:
    """The names in `out` that show it holds a run."""
    return [name for name in RUN_EVIDENCE if os.path.exists(os.path.join(out, name))]


def check_out(out: str, resume: bool, overwrite: bool, flags: bool = True) -> None:
    """Refuse a new run into a folder holding a run, unless resuming or overwriting."""
    resume_how, overwrite_how = ("--resume", "--overwrite") if flags else ("resume=True", "overwrite=True")
    if resume and overwrite:
        raise ValueError(f"{resume_how} continues the run in {out} and {overwrite_how} deletes it: give one")
    found = run_files(out)
    if found and not resume and not overwrite:
        raise RunExistsError(f"{out} already holds a run ({', '.join(found)}): continue it with {resume_how}, "
                             f"or delete it and start afresh with {overwrite_how}")


def clear_run(out: str) -> list[str]:
    """Delete the files a run writes (nothing else) from `out`; returns the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
        else:
            continue
        removed.append(name)
    return removed + remove_run_temporaries(out)


def remove_run_temporaries(out: str) -> list[str]:
    """Delete what a write of a run output (checkpoint, model folder, ...) killed midway left behind."""
    return [removed for name in RUN_OUTPUTS for removed in remove_stale_temporaries(out, name)]


def tidy_out(out: str, overwrite: bool, resumed_step: int | None) -> list[str]:
    """Before a run starts: delete the earlier run (overwrite), or, for a run resumed at
    `resumed_step`, remove what a kill left behind. Returns notes saying what was done."""
    notes = []
    if overwrite:
        removed = clear_run(out)
        if removed:
            notes.append(f"--overwrite: deleted {', '.join(removed)} from {out}")
    if resumed_step is not None:
        stale = remove_run_temporaries(out)
        if stale:
            notes.append(f"removed {len(stale)} temporary file(s) of an interrupted write: "
                         f"{', '.join(stale)}")
        torn = trim_metrics(out, resumed_step)
        if torn:
            notes.append(torn)
    return notes


def trim_metrics(out: str, last_step: int) -> str | None:
    """Keep the metrics.jsonl rows up to `last_step` (the checkpoint's), so a resumed run appends to
    a file that reads as one run. A torn last line (a kill mid-write) is dropped; returns a note
    saying so, else None. A broken line elsewhere is an error naming it."""
    path = os.path.join(out, METRICS_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as stream:
        lines = [line for line in stream.read().splitlines() if line.strip()]
    kept, note = [], None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not JSON ({line[:60]!r}); fix or delete that line")
            note = f"{path}: dropped a torn last line (an interrupted write)"
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line + "\n")
    def write(tmp: str) -> None:
        with open(tmp, "w") as stream:
            stream.writelines(kept)

    atomic_write(path, write)
    return note
