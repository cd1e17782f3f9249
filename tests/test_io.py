"""Input readers, bad-input errors and the partial-output files (no model needed)."""

import json

import pytest

from affedge.errors import InputError
from affedge.io import (
    MAX_ITEM_CHARS,
    InputReader,
    ResultSink,
    atomic_write,
    partial_path,
    read_partial,
    scan,
)


def _read(path, **kw):
    reader = InputReader(str(path), **kw)
    return list(reader), reader.stats


def test_txt_lines_ids_blank_bom_crlf(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes("\ufeffgood film\r\n\r\n  \nbad film\n".encode())
    records, stats = _read(p)
    assert [(r.id, r.text) for r in records] == [("1", "good film"), ("4", "bad film")]
    assert stats.items == 2 and stats.blank == 2


def test_csv_and_tsv_columns(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('id,review,speaker\n7,"Great, really ""great""",Ann\n8,meh,\n,,\n')
    records, stats = _read(p, text_field="review")
    assert [r.text for r in records] == ['Great, really "great"', "meh"]
    assert [r.id for r in records] == ["1", "2"]
    assert records[0].speaker == "Ann" and records[1].speaker is None
    assert stats.blank == 1
    t = tmp_path / "in.tsv"
    t.write_text("text\tx\nhello there\t1\n")
    assert [r.text for r in _read(t)[0]] == ["hello there"]


def test_csv_quoted_newline_keeps_row_numbers(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text('text\n"line one\nline two"\nnext\n')
    records, _ = _read(p)
    assert [r.text for r in records] == ["line one\nline two", "next"]
    assert [r.id for r in records] == ["1", "2"]


def test_jsonl_fields_and_context(tmp_path):
    p = tmp_path / "in.jsonl"
    rows = [
        {"text": "I can't believe it", "speaker": "B", "context": ["Guess what?", "What?"]},
        {"body": "x", "text": "ok", "context": [{"speaker": "A", "text": "hi"}], "aspect": "food"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    records, stats = _read(p)
    assert records[0].speaker == "B"
    assert [t.text for t in records[0].context] == ["Guess what?", "What?"]
    assert records[1].context[0].speaker == "A" and records[1].aspect == "food"
    assert stats.blank == 1


@pytest.mark.parametrize(
    ("name", "content", "kw", "message"),
    [
        ("a.jsonl", '{"text": "ok"}\n{"text": broken}\n', {}, r"a\.jsonl:2: malformed JSON"),
        ("a.jsonl", '{"text": "ok"}\n[1, 2]\n', {}, r"a\.jsonl:2: expected a JSON object"),
        ("a.jsonl", '{"body": "ok"}\n', {}, r"a\.jsonl:1: no field 'text' \(has: body\)"),
        ("a.jsonl", '{"text": 5}\n', {}, r"a\.jsonl:1: field 'text' is int"),
        ("a.jsonl", '{"text": "x", "context": "hi"}\n', {}, r"'context' must be a list"),
        ("a.csv", "review\nfine\n", {}, r"no column 'text' \(columns: review\)"),
        ("a.csv", "text,b\nfine,1\nbad\n", {}, r"a\.csv:3: row has 1 fields, the header has 2"),
        ("a.csv", 'text\n"never closed\n', {}, r"a\.csv:2: malformed CSV"),
        ("a.csv", "", {}, r"empty file"),
        ("a.txt", "\n\n  \n", {}, r"no items to annotate \(3 blank lines skipped\)"),
        ("a.json", "[]", {}, r"one object per line"),
        ("a.xlsx", "x", {}, r"pass --input-format"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, kw, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        scan(InputReader(str(p), **kw))


def test_undecodable_bytes_name_the_line_and_suggest_encoding(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("fine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.txt:2: byte 0xe9 at column 4 .*--encoding"):
        scan(InputReader(str(p)))
    records, _ = _read(p, encoding="latin-1")
    assert records[1].text == "café au lait"


def test_missing_file_folder_and_unknown_encoding(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        InputReader(str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="is a folder"):
        InputReader(str(tmp_path))
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(InputError, match="unknown encoding"):
        InputReader(str(tmp_path / "a.txt"), encoding="klingon")


def test_huge_line_is_clipped_and_counted(tmp_path):
    p = tmp_path / "huge.txt"
    p.write_text("short\n" + "word " * (MAX_ITEM_CHARS // 2) + "\n")
    records, stats = _read(p)
    assert len(records[1].text) == MAX_ITEM_CHARS and stats.clipped == 1


def _row(i):
    return {"id": i, "text": f"t{i}", "task": "sentiment", "label": "positive"}


def test_sink_writes_output_only_when_finished(tmp_path):
    out = tmp_path / "out.jsonl"
    sink = ResultSink(out, "jsonl", {"task": "sentiment"})
    sink.write(_row(1))
    assert not out.exists() and partial_path(out).exists()
    sink.finish()
    assert not partial_path(out).exists()
    assert [json.loads(line) for line in out.read_text().splitlines()] == [_row(1)]


def test_sink_csv_output_flattens_probs(tmp_path):
    out = tmp_path / "out.csv"
    sink = ResultSink(out, "csv", {})
    sink.write({"id": 1, "label": "a", "probs": {"a": 0.75, "b": 0.25}})
    sink.finish()
    assert out.read_text().splitlines() == ["id,label,probs.a,probs.b", "1,a,0.75,0.25"]


def test_partial_with_cut_last_line_resumes_cleanly(tmp_path):
    out = tmp_path / "out.jsonl"
    sink = ResultSink(out, "jsonl", {"task": "sentiment"})
    for i in (1, 2):
        sink.write(_row(i))
    sink.abandon()
    with partial_path(out).open("a") as fh:
        fh.write('{"id": 3, "text": "t3", "ta')  # killed mid-write
    run = read_partial(partial_path(out))
    assert run.ids == [1, 2] and run.header["task"] == "sentiment"
    sink = ResultSink(out, "jsonl", {"task": "sentiment"}, resume=run)
    sink.write(_row(3))
    sink.finish()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [1, 2, 3]


def test_foreign_partial_file_is_refused(tmp_path):
    p = tmp_path / "x.jsonl.partial"
    p.write_text('{"something": "else"}\n')
    with pytest.raises(InputError, match="not an affedge partial"):
        read_partial(p)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"

    def boom(fh):
        fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path):
    """Two `--resume` runs of one interrupted output used to both run and duplicate records."""
    from affedge.errors import InputError
    from affedge.io import partial_lock, partial_path
    from affedge.runner import Job, annotate_file

    src = tmp_path / "in.txt"
    src.write_text("good\nbad\n")
    out = tmp_path / "out.jsonl"
    part = partial_path(out)
    with partial_lock(part, fresh=True):
        part.write_text('{"affedge_partial": 1}\n')
        with pytest.raises(InputError, match="another affedge run is writing"):
            annotate_file(str(src), Job(), output=out, resume=True)
        with pytest.raises(InputError, match="holds an interrupted run"):
            annotate_file(str(src), Job(), output=out)
    part.unlink()
    with partial_lock(part, fresh=True):
        pass
    assert not part.exists()  # an empty claim leaves nothing behind
    annotate_file(str(src), Job(), output=out)
    assert len(out.read_text().splitlines()) == 2 and not part.exists()
