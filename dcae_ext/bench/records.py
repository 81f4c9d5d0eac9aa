"""Benchmark records: one JSON object per measured implementation, appended to
benchmarks/results/<device>.jsonl and never rewritten. The keys are listed in benchmarks/README.md.

Schema 2 (this harness) adds the spread (`fwd_spread`, `fwdbwd_spread`, `noisy`), the work and a
limit fraction per phase (`fwd_fraction_of_limit`, `fwdbwd_fraction_of_limit`). Records without a
`schema` key are schema 1 and are read through `normalize`: their single `fraction_of_limit` was
of forward+backward for IBQ and of the forward for every other op, and they carry no spread.
"""
from __future__ import annotations

import datetime
import json
import os

import torch

from dcae_ext.bench.hardware import device_name

SCHEMA = 2


def make_record(op: str, impl: str, device: torch.device | str, dtype: torch.dtype, shape: dict,
                measurement: dict, **extra) -> dict:
    dev = torch.device(device)
    record = {
        "schema": SCHEMA,
        "op": op,
        "impl": impl,
        "device": dev.type,
        "device_name": device_name(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "shape": shape,
        **measurement,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(extra)
    return record


def normalize(record: dict) -> dict:
    """A copy in the current schema's terms (schema 1 records gain the per-phase fractions)."""
    record = dict(record)
    if record.get("schema", 1) >= 2:
        return record
    record["schema"] = 1
    old_fraction = record.get("fraction_of_limit")
    if "floor_fwdbwd_ms" in record:  # IBQ: the fraction was of the forward+backward GEMM floor
        record["fwdbwd_fraction_of_limit"] = old_fraction
        fwd_ms = record.get("fwd_ms")
        record["fwd_fraction_of_limit"] = record["floor_fwd_ms"] / fwd_ms if fwd_ms and record.get(
            "floor_fwd_ms") else None
    else:
        record["fwd_fraction_of_limit"] = old_fraction
        record.setdefault("fwdbwd_fraction_of_limit", None)
    return record


def results_path(device: torch.device | str, results_dir: str = os.path.join("benchmarks", "results"),
                 kind: str = "") -> str:
    """<results_dir>/<device>[-<kind>].jsonl: cpu.jsonl, cuda-nvidia-h200.jsonl, cpu-encode.jsonl, ..."""
    dev = torch.device(device)
    if dev.type == "cpu":
        name = "cpu"
    else:
        slug = "".join(c if c.isalnum() else "-" for c in device_name(dev).lower()).strip("-")
        name = f"{dev.type}-{slug}"
    return os.path.join(results_dir, f"{name}-{kind}.jsonl" if kind else f"{name}.jsonl")


def append_records(records: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def read_records(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as stream:
        return [normalize(json.loads(line)) for line in stream if line.strip()]


def latest(records: list[dict]) -> list[dict]:
    """One record per (op, impl, dtype, shape, quick): the one with the latest date (ties: the later line)."""
    chosen: dict[tuple, dict] = {}
    for record in records:
        key = (record["op"], record["impl"], record["dtype"], json.dumps(record["shape"], sort_keys=True),
               bool(record.get("quick")))
        if key not in chosen or record["date"] >= chosen[key]["date"]:
            chosen[key] = record
    return list(chosen.values())
