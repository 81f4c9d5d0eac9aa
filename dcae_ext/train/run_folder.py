"""A run's output folder: whether it holds a run, refusing or clearing it, and tidying it for a resume.
What belongs to a run is what `dcae_ext.output_folder` recorded: nothing else is written over or deleted."""
from __future__ import annotations

import json
import os

from dcae_ext import output_folder
from dcae_ext.files import atomic_write, read_json, remove_stale_temporaries
from dcae_ext.models.formats.training_run import TRAINING_CHECKPOINT, is_run_config

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


def is_unrecorded_run(out: str) -> bool:
    """A run written before runs recorded their outputs: its config.json is a run's, and no record exists."""
    config = os.path.join(out, CONFIG_NAME)
    if os.path.isfile(os.path.join(out, output_folder.RECORD_FILE)) or not os.path.isfile(config):
        return False
    try:
        return is_run_config(read_json(config))
    except ValueError:
        return False


def check_out(out: str, resume: bool, overwrite: bool, flags: bool = True) -> None:
    """Refuse a new run into a folder holding a run, unless resuming or overwriting; a resume with
    nothing to resume; and any run where a name it writes holds something no run wrote."""
    resume_how, overwrite_how = ("--resume", "--overwrite") if flags else ("resume=True", "overwrite=True")
    if resume and overwrite:
        raise ValueError(f"{resume_how} continues the run in {out} and {overwrite_how} deletes it: give one")
    found = run_files(out)
    if resume and not os.path.isfile(os.path.join(out, CHECKPOINT_NAME)):
        if not found:
            raise ValueError(f"{resume_how}: {out} holds no run to resume (no {CHECKPOINT_NAME}); start a run there "
                             f"without {resume_how}")
        raise ValueError(f"{resume_how}: the run in {out} saved no {CHECKPOINT_NAME} (it stopped before its first "
                         f"checkpoint), so it cannot continue; start it afresh with {overwrite_how}")
    if not resume:  # a resumed run's folder is its own: what a run writes there is its
        foreign = output_folder.foreign_names(out, RUN_OUTPUTS, adopt=is_unrecorded_run(out))
        if foreign:
            doing = f"{overwrite_how} deletes only what a run wrote, and a new run" if overwrite else "a new run"
            raise output_folder.ForeignFilesError(
                f"{out} holds {', '.join(foreign)}, which no dcae-ext run wrote; {doing} would write there: move "
                "them, or choose another output folder")
    if found and not resume and not overwrite:
        raise RunExistsError(f"{out} already holds a run ({', '.join(found)}): continue it with {resume_how}, "
                             f"or delete it and start afresh with {overwrite_how}")


def clear_run(out: str) -> list[str]:
    """Delete what runs recorded writing in `out` (nothing else); returns the names removed."""
    return output_folder.remove_recorded(out, RUN_OUTPUTS) + remove_run_temporaries(out)


def remove_run_temporaries(out: str) -> list[str]:
    """Delete what a write of a run output (checkpoint, model folder, ...) killed midway left behind."""
    return [removed for name in RUN_OUTPUTS for removed in remove_stale_temporaries(out, name)]


def tidy_out(out: str, overwrite: bool, resumed_step: int | None) -> list[str]:
    """Before a run starts: delete the earlier run (overwrite), or, for a run resumed at
    `resumed_step`, remove what a kill left behind. Returns notes saying what was done."""
    notes = []
    if overwrite or resumed_step is not None or is_unrecorded_run(out):  # check_out found these names to be a run's
        output_folder.record_names(out, [name for name in RUN_OUTPUTS if os.path.lexists(os.path.join(out, name))])
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
    output_folder.record_names(out, RUN_OUTPUTS)  # before the run writes any of them
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
