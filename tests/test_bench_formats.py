"""`affedge bench --output-format`: the flat rows and their csv, jsonl and sql renderings.

The sql file is loaded into sqlite3 and queried back; csv and jsonl are parsed back.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from affedge.bench.formats import (
    BENCH_FIELDS,
    FIELD_NAMES,
    bench_rows,
    parse_formats,
    to_csv,
    to_jsonl,
    to_sql,
    write_bench,
)
from affedge.errors import InputError

REPO = Path(__file__).resolve().parents[1]

REPORT = {
    "benchmark": "bench",
    "date": "2026-01-02T03:04:05+00:00",
    "command": "affedge bench --input 'it''s, \"odd\".txt'",
    "machine": {"cpu": "CPU, with comma", "cores_usable": 2, "os": "Linux", "python": "3.11",
                "packages": {"affedge": "0.1.0"}},
    "items": "reviews.txt, first 10",
    "task": "polarity",
    "threads": [1, 2],
    "reps": 3,
    "latency_items": 5,
    "sgemm": {"1": {"gflops": 70.5}, "2": {"gflops": 130.25}},
    "results": [
        {"system": "affedge:minilm-affect-int8", "threads": 2, "items": 10, "reps": 3,
         "cold_start_s": 0.5, "items_per_s": 96.7, "items_per_s_runs": [96.0, 97.0],
         "params": 10616832, "accuracy": 0.8333, "ece": float("nan"), "probabilistic": True},
        {"system": "vader", "threads": 1, "items": 10, "items_per_s": 9933.3, "accuracy": 0.5},
        {"system": "transformers:x", "threads": 1,
         "error": "exit 1: it's\nbroken; DROP TABLE affedge_bench; --"},
    ],
}  # fmt: skip


def test_rows_are_flat_typed_and_complete():
    rows = bench_rows(REPORT)
    assert len(rows) == 3 and all(tuple(r) == FIELD_NAMES for r in rows)
    ours, vader, failed = rows
    assert ours["system_kind"] == "affedge" and ours["model"] == "minilm-affect-int8"
    assert ours["n_threads"] == 2 and ours["n_items"] == 10 and ours["sgemm_gflops"] == 130.25
    assert ours["inputs"] == "reviews.txt, first 10" and ours["cpu_info"] == "CPU, with comma"
    assert ours["affedge_version"] == "0.1.0" and ours["params"] == 10616832
    assert ours["ece"] is None  # NaN is no value
    assert vader["model"] is None and vader["sgemm_gflops"] == 70.5
    assert failed["error"].startswith("exit 1") and failed["items_per_s"] is None


def test_sql_loads_into_sqlite_with_its_types(tmp_path):
    db = sqlite3.connect(":memory:")
    sql = to_sql(bench_rows(REPORT))
    db.executescript(sql)
    db.executescript(sql)  # CREATE TABLE IF NOT EXISTS: a second run's file appends
    assert db.execute("SELECT COUNT(*) FROM affedge_bench").fetchone() == (6,)
    declared = {row[1]: row[2] for row in db.execute("PRAGMA table_info(affedge_bench)")}
    assert declared == dict(BENCH_FIELDS)
    got = db.execute(
        "SELECT system, n_threads, items_per_s, ece, command, typeof(params), typeof(accuracy) "
        "FROM affedge_bench WHERE system_kind = 'affedge' LIMIT 1"
    ).fetchone()
    assert got == ("affedge:minilm-affect-int8", 2, 96.7, None, REPORT["command"],
                   "integer", "real")  # fmt: skip
    (error,) = db.execute("SELECT DISTINCT error FROM affedge_bench WHERE error IS NOT NULL")
    assert error == (REPORT["results"][2]["error"],)  # quotes, newline and ; survive as text


def test_csv_and_jsonl_read_back():
    rows = bench_rows(REPORT)
    read = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(read) == 3 and tuple(read[0]) == FIELD_NAMES
    assert read[0]["cpu_info"] == "CPU, with comma" and read[0]["ece"] == ""
    assert read[2]["error"] == REPORT["results"][2]["error"]
    assert float(read[1]["items_per_s"]) == 9933.3
    lines = to_jsonl(rows).splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_parse_formats():
    assert parse_formats("md,json,csv,jsonl,sql") == ["md", "json", "csv", "jsonl", "sql"]
    assert parse_formats(" SQL, csv ") == ["json", "csv", "sql"]  # json is always written
    for bad in ("xml", "csv,xml", " , "):
        with pytest.raises(InputError, match="--output-format"):
            parse_formats(bad)


def test_write_bench_writes_the_asked_files(tmp_path):
    written = write_bench(tmp_path / "out" / "bench", REPORT, "# md\n", ["json", "sql"])
    assert [p.name for p in written] == ["bench.json", "bench.sql"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.sql"]
    back = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert back["results"][0]["items_per_s_runs"] == [96.0, 97.0]  # json keeps everything
    db = sqlite3.connect(":memory:")
    db.executescript((tmp_path / "out" / "bench.sql").read_text())
    assert db.execute("SELECT COUNT(*) FROM affedge_bench").fetchone() == (3,)


@pytest.mark.skipif(not (REPO / "bench/results/bench.json").is_file(), reason="no results")
def test_the_recorded_bench_converts():
    report = json.loads((REPO / "bench/results/bench.json").read_text())
    db = sqlite3.connect(":memory:")
    db.executescript(to_sql(bench_rows(report)))
    n = db.execute("SELECT COUNT(*), COUNT(DISTINCT system) FROM affedge_bench").fetchone()
    assert n[0] == len(report["results"]) and n[1] >= 2


def test_cli_refuses_an_unknown_format_before_running(cli, tmp_path):
    res = cli("bench", "--output-format", "md,xml", "--out", tmp_path / "o")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "--output-format: xml is not one of md, json, csv, jsonl, sql" in res.stderr
    assert not (tmp_path / "o").exists()
