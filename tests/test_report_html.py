"""`affedge report`: the tables found in JSON of many shapes, the folder's figures, machines
and commands, escaping, and bad input (one line, exit 2, nothing written).

The page in a real browser is tests/test_report_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from affedge.bench.html_report import build_context, cell, find_tables, render, write_report_html
from affedge.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # embedded as bytes; never decoded here


def texts(table) -> list[list[str]]:
    return [[c.text for c in row] for row in table.rows]


def by_title(tables) -> dict:
    return {t.title: t for t in tables}


# ------------------------------------------------------------------ tables from JSON


def test_records_are_flattened_one_level_and_lists_left_to_the_json():
    data = {
        "benchmark": "eval",
        "command": "affedge eval --all",
        "results": [
            {"system": "a", "metrics": {"accuracy": 0.5, "f1": 0.25}, "items_per_s_runs": [1, 2],
             "confusion": {"x": {"x": 1}}, "plot": "a.png"},
            {"system": "b", "metrics": {"accuracy": 1.0}, "error": None, "note": ""},
        ],
    }  # fmt: skip
    (table,) = find_tables(data)
    assert table.title == "results"
    # confusion (two levels down), the per-repetition list, the figure's file name, and the
    # columns empty in every row are not columns
    assert table.columns == ["system", "metrics.accuracy", "metrics.f1"]
    assert texts(table) == [["a", "0.5", "0.25"], ["b", "1", ""]]


def test_an_object_of_objects_is_one_table_keyed_by_name():
    data = {"speed": {"vader": {"items_per_s": 9000.0, "runs": [1.0]}, "static": {"items_per_s":
            123456.0, "x_vader": 13.7}}}  # fmt: skip
    (table,) = find_tables(data)
    assert table.title == "speed" and table.columns == ["", "items_per_s", "x_vader"]
    assert texts(table) == [["vader", "9000.0", ""], ["static", "123456.0", "13.7"]]


def test_loose_scalars_become_a_field_value_table_and_run_metadata_does_not():
    data = {
        "date": "2026-01-01", "machine": {"cpu": "x"}, "argv": ["-n", "3"], "model": "m",
        "threads": [1, 2], "limit": None, "plot": "bench.png",
        "nested": {"command": "inner", "depth": 2, "deeper": {"rows": [{"k": 1}]}},
    }  # fmt: skip
    tables = by_title(find_tables(data))
    assert texts(tables["summary"]) == [["model", "m"], ["threads", "1, 2"]]
    assert texts(tables["nested"]) == [["depth", "2"]]
    assert texts(tables["nested.deeper.rows"]) == [["1"]]


def test_a_top_level_confusion_matrix_is_a_table():
    data = {"task": "polarity", "confusion": {"pos": {"pos": 5, "neg": 1}, "neg": {"pos": 2,
            "neg": 4}}}  # fmt: skip
    table = by_title(find_tables(data))["confusion"]
    assert table.columns == ["", "pos", "neg"] and texts(table) == [["pos", "5", "1"],
                                                                     ["neg", "2", "4"]]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "text", "css"),
    [
        (None, "", "na"), (True, "yes", ""), (3, "3", "num"), (0.12345678, "0.1235", "num"),
        (2.0, "2", "num"), (1234.56, "1234.6", "num"), (0.00012, "0.00012", "num"),
        (1.5e9, "1.5e+09", "num"), (float("nan"), "nan", "num"), ("x", "x", "txt"),
    ],
)  # fmt: skip
def test_cells(value, text, css):
    assert (cell(value).text, cell(value).css) == (text, css)


# ------------------------------------------------------------------ the folder


def _folder(root: Path) -> Path:
    (root / "eval_m").mkdir(parents=True)
    machine = {"cpu": "CPU A", "cores_usable": 2, "os": "Linux", "python": "3.11",
               "packages": {"affedge": "0.1.0", "numpy": None}}  # fmt: skip
    rows = [{"system": "affedge:m", "items_per_s": 10.0}]
    bench = {"benchmark": "bench", "date": "d1", "command": "affedge bench --n 5",
             "machine": machine, "results": rows}  # fmt: skip
    (root / "bench.json").write_text(json.dumps(bench))
    report = {"benchmark": "report", "argv": ["--models", "a b"], "machine": machine,
              "bench": bench}  # fmt: skip
    (root / "report.json").write_text(json.dumps(report))
    (root / "train.json").write_text(json.dumps({"run": "r", "machine": "x86_64, CPU only"}))
    (root / "odd.json").write_text("[1, 2, 3]")
    (root / "bench.md").write_text("# bench\n")
    (root / "bench_quality_vs_speed.png").write_bytes(PNG)
    (root / "eval_m" / "confusion_polarity_sst2.png").write_bytes(PNG)
    (root / "eval_m" / "reliability_polarity_sst2.png").write_bytes(PNG)
    (root / "eval_m" / "loss.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / ".report.html.tmp").write_text("hidden: ignored")
    return root


def test_the_folder_context(tmp_path):
    ctx = build_context(_folder(tmp_path / "results"))
    files = {f.name: f for f in ctx["files"]}
    assert list(files) == ["bench.json", "report.json", "train.json"]
    assert files["report.json"].commands == ["--models 'a b'", "affedge bench --n 5"]
    # report.json repeats bench.json's table: shown once, the copy points at it
    copy = by_title(files["report.json"].tables)["bench.results"]
    assert copy.rows == [] and copy.note == "same table as bench.json: results"
    assert [(o.name, o.note) for o in ctx["other_files"]] == [
        ("odd.json", "JSON of an unknown shape (no table found)"),
        ("bench.md", ""),
    ]
    # two distinct machines (an object used twice, a sentence), packages without None
    assert [(m["cpu"], m["packages"], m["files"]) for m in ctx["machines"]] == [
        ("CPU A", "affedge 0.1.0", ["bench.json", "report.json"]),
        ("x86_64, CPU only", "", ["train.json"]),
    ]
    assert [f.name for f in ctx["quality_figures"]] == ["bench_quality_vs_speed.png"]
    groups = {g["title"]: g["folders"] for g in ctx["figure_groups"]}
    assert list(groups) == ["Confusion matrices", "Reliability diagrams", "Other figures"]
    (folder, (figure,)) = groups["Confusion matrices"][0]
    assert folder == "eval_m" and figure.data_uri.startswith("data:image/png;base64,iVBORw0KG")
    assert groups["Other figures"][0][1][0].data_uri.startswith("data:image/svg+xml;base64,")
    assert ctx["image_count"] == 4


def test_the_page_escapes_everything_and_loads_nothing(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    hostile = "<script>alert('x')</script>"
    (root / "a.json").write_text(json.dumps({"command": f"run {hostile}", "rows": [
        {"system": hostile, "note": '"quoted" & <b>bold</b>'}]}))  # fmt: skip
    page = render(build_context(root, title="t <i>"))
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&#34;quoted&#34; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert '"Segoe UI"' in page  # the CSS itself is not escaped
    assert "http://" not in page and "https://" not in page and 'src="data:' not in page


def test_write_report_html(tmp_path):
    out = tmp_path / "out" / "report.html"
    info = write_report_html(_folder(tmp_path / "results"), out)
    assert out.is_file() and info["bytes"] == out.stat().st_size and info["figures"] == 4
    assert not list(out.parent.glob(".*"))  # no temporary file left behind
    # written into the folder: a second run does not list the page among the other files
    inside = tmp_path / "results" / "report.html"
    for _ in range(2):
        info = write_report_html(tmp_path / "results", inside)
    assert info["listed"] == 2 and "report.html</code>" not in inside.read_text()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, "no such folder"),
        ({}, "no results (no *.json file in the folder)"),
        ({"x.md": b"x"}, "no results"),
        ({"a.json": b"{}", "b.json": b'{"x": 1,'}, "b.json: unreadable JSON (Expecting"),
        ({"c.json": b'{"x": "\xff"}'}, "c.json: unreadable JSON ('utf-8' codec"),
    ],
)
def test_bad_input_is_one_error(tmp_path, files, message):
    results = tmp_path / "results"
    if files is not None:
        results.mkdir()
        for name, data in files.items():
            (results / name).write_bytes(data)
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match=re.escape(message)) as err:
        write_report_html(results, out)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_cli_report(cli, tmp_path):
    results = _folder(tmp_path / "results")
    out = tmp_path / "report.html"
    ok = cli("report", results, "-o", out)
    assert ok.returncode == 0, ok.stderr
    assert out.read_text().startswith("<!DOCTYPE html>") and "wrote" in ok.stderr

    (results / "broken.json").write_text("{")
    out.write_text("previous report")
    bad = cli("report", results, "-o", out)
    missing = cli("report", tmp_path / "nope", "-o", tmp_path / "new.html")
    for res in (bad, missing):
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("affedge: error:")
    assert "broken.json: unreadable JSON" in bad.stderr
    assert out.read_text() == "previous report" and not (tmp_path / "new.html").exists()


@pytest.mark.skipif(not (REPO / "bench/results/bench.json").is_file(), reason="no results")
def test_the_repository_results_render(tmp_path):
    ctx = build_context(REPO / "bench/results")
    page = render(ctx)
    assert len(page.encode()) < 5_000_000
    names = [f.name for f in ctx["files"]]
    assert names[0] == "bench.json" and "report.json" in names
    bench = by_title(ctx["files"][0].tables)
    assert "affedge:minilm-affect-int8" in [r[0] for r in texts(bench["results"])]
    assert ctx["quality_figures"] and ctx["machines"] and ctx["commands"]
