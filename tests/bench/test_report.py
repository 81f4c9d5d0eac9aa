"""Records old and new, the tables built from them, and the README tables regenerated from results."""
import json
import os

import pytest

from dcae_ext.bench import report, tables
from dcae_ext.bench.records import latest, normalize, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_old_records_read_in_current_terms():
    ibq = normalize({"op": "ibq_quantize", "fwd_ms": 2.0, "fraction_of_limit": 0.6, "floor_fwd_ms": 0.5,
                     "floor_fwdbwd_ms": 1.5})
    assert ibq["schema"] == 1 and ibq["fwdbwd_fraction_of_limit"] == 0.6 and ibq["fwd_fraction_of_limit"] == 0.25
    shortcut = normalize({"op": "pixel_unshuffle_mean", "fraction_of_limit": 0.2})
    assert shortcut["fwd_fraction_of_limit"] == 0.2 and shortcut["fwdbwd_fraction_of_limit"] is None
    attention = normalize({"op": "linear_attention", "fraction_of_limit": 0.2, "fwdbwd_fraction_of_limit": 0.1})
    assert attention["fwdbwd_fraction_of_limit"] == 0.1
    current = {"schema": 2, "op": "x", "fwd_fraction_of_limit": 0.1}
    assert normalize(current) == current


def test_every_results_file_the_tables_use_loads():
    used = set()
    for name in tables.DEFAULT_FILES:
        path = os.path.join(ROOT, name)
        used |= {os.path.normpath(os.path.join(os.path.dirname(path), tables._parse_spec(m["spec"])["results"]))
                 for m in tables.BLOCK.finditer(open(path).read())}
    assert {os.path.basename(path) for path in used} >= {"cpu.jsonl", "cuda-nvidia-h200.jsonl"}
    for path in used:
        records = read_records(path)
        assert records and all(r["schema"] in (1, 2) for r in records)
        # every record that was timed has its fraction of the limit (a skipped one measured nothing)
        assert all("fwd_fraction_of_limit" in r for r in records if not r.get("skipped"))


def test_table_rows_put_each_number_in_its_column_and_flag_the_spread(fake_records):
    rows = {(row[0], row[1]): dict(zip(report.HEADER, row)) for row in report.table_rows(latest(fake_records))}
    assert len(rows) == 4  # one per fast record, the latest only
    down = rows[("pixel_unshuffle_mean", "stage=down0")]
    assert (down["speedup fwd"], down["speedup f+b"]) == ("2.00x", "1.25x")
    assert (down["IQR"], down["of limit fwd"], down["of limit f+b"]) == ("3.0%", "5.0%", "25.0%")
    up = rows[("pixel_shuffle_repeat", "stage=up0")]
    assert up["IQR"] == "25.0%!" and up["speedup f+b"] == "0.80x" and up["of limit fwd"] == "0.9%"
    attention = rows[("linear_attention", "case=dcae_stage_16x16 layout=separate")]
    assert attention["IQR"] == "n/a" and attention["of limit fwd"] == "30.0%" and attention["of limit f+b"] == "-"
    ibq = rows[("ibq_quantize", "N=8 K=64 D=4")]
    assert ibq["speedup fwd"] == "ref OOM" and ibq["ref peak MB"] == "-"


def test_summary_ranges_cover_every_case_in_the_right_column(fake_records):
    rows = {row[0]: dict(zip(report.SUMMARY_HEADER, row)) for row in report.summary_rows(latest(fake_records))}
    shortcuts = rows["shortcuts, f32c32 stage shapes"]
    assert shortcuts["cases"] == "2"
    assert shortcuts["speedup fwd"] == "1.40x - 2.00x" and shortcuts["speedup fwd+bwd"] == "0.80x - 1.25x"
    assert shortcuts["of limit fwd"] == "0.9% - 5.0%" and shortcuts["of limit f+b"] == "25.0% - 50.0%"
    assert shortcuts["ref / fast peak memory"] == "1.5x - 3.0x" and shortcuts["noisy rows"] == "1 of 2"
    assert rows["linear attention, DC-AE stage shapes"]["noisy rows"] == "n/a"
    assert rows["IBQ quantize"]["ref / fast peak memory"] == "- (ref OOM in 1)"


def _write(tmp_path, records, text):
    (tmp_path / "results").mkdir()
    with open(tmp_path / "results" / "cpu.jsonl", "w") as stream:
        stream.writelines(json.dumps(r) + "\n" for r in records)
    (tmp_path / "README.md").write_text(text)
    return str(tmp_path / "README.md")


def test_tables_regenerate_between_markers_and_check_reports_stale_ones(tmp_path, capsys, fake_records):
    text = ("# Results\n\n<!-- bench-table kind=summary results=results/cpu.jsonl -->\nstale\n<!-- /bench-table -->\n"
            "prose\n<!-- bench-table kind=full results=results/cpu.jsonl dtype=float32 -->\n<!-- /bench-table -->\n")
    path = _write(tmp_path, fake_records, text)
    assert tables.main(["--check", path]) == 1
    assert "-stale" in capsys.readouterr().out
    assert tables.main([path]) == 0
    fresh = open(path).read()
    assert fresh.startswith("# Results\n\n<!-- bench-table kind=summary") and "\nprose\n" in fresh
    assert "| shortcuts, f32c32 stage shapes | 2 | float32 | 1.40x - 2.00x | 0.80x - 1.25x |" in fresh
    assert "| pixel_shuffle_repeat | stage=up0 | float32 | 1.000 | 1.400 | 1.40x |" in fresh
    assert "x86_64 (cpu), torch 2.14.1, cuda None" in fresh and "stale" not in fresh
    assert tables.main(["--check", path]) == 0


def test_a_bad_marker_names_what_it_needs(tmp_path):
    path = _write(tmp_path, [], "<!-- bench-table kind=wide results=results/cpu.jsonl -->\n<!-- /bench-table -->\n")
    with pytest.raises(ValueError, match="kind=full|summary"):
        tables.main(["--check", path])


def test_committed_readmes_are_regenerated_from_the_committed_results(capsys):
    paths = [os.path.join(ROOT, name) for name in tables.DEFAULT_FILES]
    for path in paths:
        assert tables.BLOCK.search(open(path).read()), f"{path} has no generated table"
    assert tables.main(["--check", *paths]) == 0, capsys.readouterr().out


def test_speedup_quartiles_span_the_ratio_of_the_quartiles(fake_records):
    fast, ref = fake_records[2], fake_records[3]  # fwd medians 1.0 and 2.0, IQR 2% and 3% of them
    low, high = report.speedup_quartiles(fast, ref, "fwd")
    assert low == pytest.approx((2.0 - 0.03) / (1.0 + 0.01)) and high == pytest.approx((2.0 + 0.03) / (1.0 - 0.01))
    assert report.speedup_quartiles(fake_records[6], fake_records[7], "fwd") is None  # schema 1: no spread


def test_a_baseline_gets_its_own_rows_and_the_fast_rows_a_ratio_to_it(ibq_sweep_records):
    records = latest(ibq_sweep_records)
    header = report.table_header(records)
    assert header[header.index("speedup f+b") + 1:][:2] == ["vs sdpa fwd", "vs sdpa f+b"]
    rows = {(row[0], row[1]): dict(zip(header, row)) for row in report.table_rows(records)}
    assert len(rows) == 6  # fast and sdpa at each of the three sizes; no reference rows
    fast = rows[("ibq_quantize", "N=8192 K=65536 D=256")]
    assert (fast["speedup fwd"], fast["vs sdpa fwd"], fast["vs sdpa f+b"]) == ("5.00x", "1.50x", "1.50x")
    assert fast["IQR"] == "25.0%!"  # the sdpa timing it is compared with is noisy
    sdpa = rows[("ibq_quantize [sdpa]", "N=8192 K=65536 D=256")]
    assert (sdpa["fwd ms"], sdpa["speedup fwd"], sdpa["speedup f+b"]) == ("6.000", "3.33x", "4.00x")
    assert sdpa["vs sdpa fwd"] == "-" and sdpa["peak MB"] == "150.000"
    largest = rows[("ibq_quantize", "N=16384 K=1048576 D=256")]
    assert largest["speedup f+b"] == "ref OOM" and largest["vs sdpa f+b"] == "1.50x"
    assert rows[("ibq_quantize [sdpa]", "N=16384 K=1048576 D=256")]["speedup fwd"] == "ref OOM"
    assert "`vs name`: its time / the fast op's time" in report.format_table(records)


def test_a_baseline_gets_its_own_summary_row(ibq_sweep_records):
    records = latest(ibq_sweep_records)
    rows = {row[0]: dict(zip(report.summary_header(records), row)) for row in report.summary_rows(records)}
    assert set(rows) == {"IBQ quantize", "IBQ quantize [sdpa]"}
    assert rows["IBQ quantize"]["vs sdpa f+b"] == "1.50x" and rows["IBQ quantize"]["speedup fwd"] == "5.00x"
    sdpa = rows["IBQ quantize [sdpa]"]
    assert sdpa["speedup fwd+bwd"] == "4.00x" and sdpa["vs sdpa fwd"] == "-"
    assert rows["IBQ quantize"]["ref / fast peak memory"] == "20.0x - 80.0x (ref OOM in 1)"
    # as the full table's IQR column: a fast row counts the noise of the baseline it is divided by
    assert rows["IBQ quantize"]["noisy rows"] == "3 of 3"


def test_without_a_baseline_the_columns_are_the_usual_ones(fake_records):
    assert report.table_header(fake_records) == report.HEADER
    assert report.summary_header(fake_records) == report.SUMMARY_HEADER
    assert report.table_note(fake_records) == report.NOTE


def test_result_files_are_named_by_device_and_kind(monkeypatch):
    from dcae_ext.bench import records

    assert records.results_path("cpu", "out") == os.path.join("out", "cpu.jsonl")
    assert records.results_path("cpu", "out", kind="train") == os.path.join("out", "cpu-train.jsonl")
    monkeypatch.setattr(records, "device_name", lambda device: "NVIDIA H200")
    assert records.results_path("cuda", "out", kind="encode") == os.path.join("out", "cuda-nvidia-h200-encode.jsonl")


def test_throughput_summary_flags_a_wide_spread():
    from dcae_ext.bench.timing import throughput_summary

    steady = throughput_summary([1.0, 1.02, 0.99], 10)
    assert steady["images_per_s"]["median"] == 10.0 and not steady["noisy"]
    assert throughput_summary([1.0, 1.5, 1.0], 10)["noisy"]


def test_an_out_of_memory_backward_keeps_the_forward_speedup(fake_records):
    # the harness keeps the forward time of a run that ran out of memory only in its backward
    fast, ref = dict(fake_records[2]), dict(fake_records[3])  # fwd medians 1.0 and 2.0
    ref.update(fwdbwd_ms=None, oom=True, peak_mem_mb=None)
    row = dict(zip(report.HEADER, report.table_rows([fast, ref])[0]))
    assert (row["speedup fwd"], row["speedup f+b"]) == ("2.00x", "ref OOM")
    fast.update(fwdbwd_ms=None, oom=True)
    ref.update(fwdbwd_ms=3.0, oom=False)
    row = dict(zip(report.HEADER, report.table_rows([fast, ref])[0]))
    assert (row["speedup fwd"], row["speedup f+b"]) == ("2.00x", "OOM")
