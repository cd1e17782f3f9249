"""Parquet in and out through the real CLI and the shipped encoder: the JSONL contract (ids,
bad-input lines, atomic output, resume) holds for Parquet too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from affedge.io import partial_path
from affedge.runner import Job, RunInterrupted, annotate_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MODEL = "minilm-affect-int8"
ITEMS = [
    {"text": "What a wonderful, moving film.", "speaker": "ann", "context": ["Seen it?"]},
    {"text": "The service was slow and the food was cold.", "speaker": None, "context": []},
    {"text": "   ", "speaker": "bo", "context": []},  # blank: skipped, its row number kept
    {"text": "The package arrived on Tuesday.", "speaker": "cy", "context": ["Any news?", "No."]},
    {"text": "I can't believe they cancelled my favourite show.", "speaker": None, "context": []},
    {"text": "Thanks so much, this made my day!", "speaker": "di", "context": ["Here you go."]},
    {"text": "Oh great, another Monday.", "speaker": "ed", "context": []},
]
KEPT_IDS = [1, 2, 4, 5, 6, 7]


@pytest.fixture(autouse=True)
def shipped_encoder(monkeypatch):
    """The default model: the int8 encoder that ships inside the package."""
    monkeypatch.setenv("AFFEDGE_MODEL", MODEL)


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _write_parquet(path, rows: list[dict], row_group_size: int = 3) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


@pytest.fixture
def inputs(tmp_path):
    """The same items as JSONL and as a Parquet file of three row groups."""
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    _write_parquet(tmp_path / "in.parquet", ITEMS)
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 3
    return tmp_path


def test_parquet_input_gives_the_jsonl_results(cli, inputs):
    """Text, speaker and context columns read as JSONL fields: identical rows, same ids."""
    runs = [
        ["classify", "-t", "emotion"],
        ["classify", "-t", "sarcasm"],
        ["score", "-t", "valence"],
    ]
    for args in runs:
        from_jsonl = cli(*args, "in.jsonl", "-q", cwd=inputs)
        from_parquet = cli(*args, "in.parquet", "-q", cwd=inputs)
        assert from_jsonl.returncode == 0 and from_parquet.returncode == 0, from_parquet.stderr
        assert from_parquet.stdout == from_jsonl.stdout
        assert [r["id"] for r in _jsonl(from_parquet.stdout)] == KEPT_IDS
    # --input-format for a file whose suffix does not say, and the summary counts the blank row
    (inputs / "in.bin").write_bytes((inputs / "in.parquet").read_bytes())
    res = cli("classify", "in.bin", "--input-format", "parquet", cwd=inputs)
    assert res.returncode == 0 and "6 items classified" in res.stderr and "1 blank" in res.stderr
    assert _jsonl(res.stdout) == _jsonl(cli("classify", "in.jsonl", "-q", cwd=inputs).stdout)


def test_parquet_output_one_row_per_item_in_order(cli, inputs):
    reference = _jsonl(cli("classify", "in.jsonl", "-q", cwd=inputs).stdout)
    res = cli("classify", "in.jsonl", "-q", "-o", "out.parquet", cwd=inputs)  # from the suffix
    assert res.returncode == 0, res.stderr
    table = pq.read_table(inputs / "out.parquet")
    assert table.num_rows == len(KEPT_IDS)
    assert table.column("id").to_pylist() == KEPT_IDS
    assert pa.types.is_struct(table.schema.field("probs").type)  # nested stays nested
    assert table.to_pylist() == reference
    assert not partial_path(inputs / "out.parquet").exists()

    res = cli("classify", "in.parquet", "-t", "all", "-f", "parquet", "-o", "all.pq", cwd=inputs)
    assert res.returncode == 0, res.stderr
    rows = pq.read_table(inputs / "all.pq").to_pylist()
    assert [r["id"] for r in rows] == KEPT_IDS
    assert {"sentiment", "emotion", "sarcasm", "valence", "joy"} <= set(rows[0])
    emotion = rows[0]["emotion"]
    assert emotion["label"] == max(emotion["probs"], key=emotion["probs"].get)


def test_parquet_to_stdout_is_refused_before_any_work(cli, inputs):
    res = cli("classify", "in.jsonl", "--format", "parquet", cwd=inputs)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "affedge: error: --format parquet writes a binary file: pass --output FILE"
    ]


def _stop_after(n: int):
    """A progress callback that presses Ctrl-C after ``n`` rows."""
    seen = 0

    def on_row() -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            raise KeyboardInterrupt

    return on_row


def test_resume_an_interrupted_parquet_run(cli, tmp_path):
    lines = [
        f"Item {i}: a {'great' if i % 3 else 'dreadful'} experience overall." for i in range(60)
    ]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    reference = cli("classify", "in.txt", "-q", "-o", "ref.parquet", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out.parquet"
    with pytest.raises(RunInterrupted) as stop:
        annotate_file(str(tmp_path / "in.txt"), Job("classify", "sentiment"), output=out,
                      out_format="parquet", on_row=_stop_after(25))  # fmt: skip
    assert stop.value.done == 25 and not out.exists()
    part = partial_path(out)
    with part.open("a") as fh:  # a kill in the middle of writing a row
        fh.write('{"id": 26, "text": "Item 25: a gre')

    again = cli("classify", "in.txt", "-q", "-o", "out.parquet", cwd=tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    resumed = cli("classify", "in.txt", "-o", "out.parquet", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "35 items classified" in resumed.stderr and "25 items resumed" in resumed.stderr
    assert not part.exists()
    got, want = pq.read_table(out).to_pylist(), pq.read_table(tmp_path / "ref.parquet").to_pylist()
    assert [r["id"] for r in got] == list(range(1, 61))
    assert [(r["id"], r["text"], r["label"]) for r in got] == [
        (r["id"], r["text"], r["label"]) for r in want
    ]
    # The int8 encoder's probabilities move a little with the batch an item shares (its
    # activations are quantized per batch), and a resumed run batches the rest differently.
    for a, b in zip(got, want, strict=True):
        assert a["probs"] == pytest.approx(b["probs"], abs=0.03)


def _bad_inputs(tmp_path):
    _write_parquet(tmp_path / "numbers.parquet", [{"text": 17}, {"text": 18}])
    _write_parquet(tmp_path / "nulls.parquet", [{"text": f"item {i}"} for i in range(4)]
                   + [{"text": None}], row_group_size=2)  # fmt: skip
    _write_parquet(tmp_path / "speaker.parquet", [{"text": "fine", "speaker": 3}])
    _write_parquet(tmp_path / "body.parquet", [{"body": "no text column here"}])
    (tmp_path / "garbage.parquet").write_text("id,text\n1,this is a CSV file\n")
    whole = (tmp_path / "nulls.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("numbers.parquet", "numbers.parquet: row 1 (row group 0): column 'text' is int, not text"),
        ("nulls.parquet", "nulls.parquet: row 5 (row group 2): column 'text' is null, not text"),
        ("speaker.parquet", "speaker.parquet: row 1 (row group 0): 'speaker' must be a string"),
        ("body.parquet", "body.parquet: no column 'text' (columns: body); pass --text-field NAME"),
        ("garbage.parquet", "garbage.parquet: not a readable Parquet file (Parquet magic bytes"),
        ("cut.parquet", "cut.parquet: not a readable Parquet file"),
    ],
)
def test_bad_parquet_is_one_line_exit_2_nothing_written(cli, tmp_path, name, message):
    _bad_inputs(tmp_path)
    res = cli("classify", name, "-o", "out.jsonl", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"affedge: error: {message}"), lines
    assert (
        not (tmp_path / "out.jsonl").exists() and not partial_path(tmp_path / "out.jsonl").exists()
    )


WITHOUT_PYARROW = """
import sys
sys.modules["pyarrow"] = None  # as if `pip install affedge` without the parquet extra
import affedge.cli
sys.argv = ["affedge", *sys.argv[1:]]
affedge.cli.main()
"""


@pytest.mark.parametrize(
    "args",
    [["classify", "in.parquet", "-q"], ["classify", "in.jsonl", "-q", "-o", "out.parquet"]],
)
def test_without_pyarrow_one_line_names_the_extra(inputs, args):
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYARROW, *args],
        capture_output=True, text=True, cwd=inputs, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "affedge: error: Parquet needs pyarrow, which is not installed: "
        "pip install 'affedge[parquet]'"
    ]
    assert (
        not (inputs / "out.parquet").exists() and not partial_path(inputs / "out.parquet").exists()
    )
