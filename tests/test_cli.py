"""`affedge` end to end through the real entry point and the real SmolLM2 GGUF."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time

import pytest

from affedge.io import partial_path

REVIEWS = [
    "What a wonderful, moving film.",
    "The service was slow and the food was cold.",
    "",
    "The package arrived on Tuesday.",
]


@pytest.fixture(autouse=True)
def gguf_default(monkeypatch):
    """These tests exercise the GGUF engine: make SmolLM2 the default model."""
    monkeypatch.setenv("AFFEDGE_MODEL", "smollm2-135m-instruct")


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def reviews(tmp_path):
    p = tmp_path / "reviews.txt"
    p.write_text("\n".join(REVIEWS) + "\n")
    return p


def test_classify_txt_to_jsonl(cli, reviews):
    res = cli("classify", reviews, "--threads", "2")
    assert res.returncode == 0, res.stderr
    rows = _jsonl(res.stdout)
    assert [r["id"] for r in rows] == [1, 2, 4]
    assert [r["text"] for r in rows] == [REVIEWS[0], REVIEWS[1], REVIEWS[3]]
    for r in rows:
        assert r["task"] == "sentiment" and r["model"] == "smollm2-135m-instruct"
        assert set(r["probs"]) == {"positive", "negative", "neutral"}
        assert sum(r["probs"].values()) == pytest.approx(1.0)
        assert r["label"] == max(r["probs"], key=r["probs"].get)
    assert "3 items classified" in res.stderr and "1 blank lines skipped" in res.stderr


def test_same_input_same_output(cli, reviews):
    a = cli("classify", reviews, "-q")
    b = cli("classify", reviews, "-q")
    assert a.stdout == b.stdout and a.stdout


def test_csv_in_csv_out_with_text_field(cli, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,review\n10,"Loved it, truly."\n11,Terrible.\n')
    out = tmp_path / "labels.csv"
    res = cli("classify", src, "--text-field", "review", "--task", "polarity", "-o", out)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert {"probs.positive", "probs.negative", "label", "text"} <= set(rows[0])
    assert not partial_path(out).exists()


def test_tsv_and_stdin_and_table(cli, tmp_path):
    tsv = tmp_path / "in.tsv"
    tsv.write_text("text\tsource\nGreat phone\tweb\n")
    res = cli("classify", tsv, "--format", "table")
    assert res.returncode == 0 and "Great phone" in res.stdout and "sentiment" in res.stdout
    res = cli("classify", "-", "-q", input="so happy today\n\nso sad today\n")
    assert [r["id"] for r in _jsonl(res.stdout)] == [1, 3]


def test_conversation_jsonl_for_emotion_and_sarcasm(cli, tmp_path):
    src = tmp_path / "dialogue.jsonl"
    rows = [
        {
            "text": "Oh, that's just perfect.",
            "speaker": "Chandler",
            "context": [{"speaker": "Monica", "text": "The oven broke again."}],
        },
        {"text": "We won the lottery!", "context": ["Did you check the ticket?"]},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for task, labels in (("emotion", 7), ("sarcasm", 2)):
        res = cli("classify", src, "--task", task, "-q")
        assert res.returncode == 0, res.stderr
        out = _jsonl(res.stdout)
        assert len(out) == 2 and all(len(r["probs"]) == labels for r in out)


def test_custom_labels(cli, reviews):
    res = cli("classify", reviews, "--labels", "happy,unhappy", "-q")
    assert {tuple(r["probs"]) for r in _jsonl(res.stdout)} == {("happy", "unhappy")}


def test_score_valence(cli, reviews, tmp_path):
    out = tmp_path / "scores.jsonl"
    res = cli("score", reviews, "--task", "valence", "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    rows = _jsonl(out.read_text())
    assert len(rows) == 3 and all(0 <= r["score"] <= 1 and r["task"] == "valence" for r in rows)


def test_eval_prints_metrics_json(cli, data_dir):
    res = cli("eval", "--task", "polarity", "--dataset", "sst2", "--limit", "12", "-q")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["n"] == 12 and report["metric"] == "accuracy"
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert sum(sum(row.values()) for row in report["confusion"].values()) == 12


def test_models_and_tasks_list(cli, smollm2_path):
    models = {m["name"]: m for m in json.loads(cli("models", "list", "--json").stdout)}
    smollm2 = models["smollm2-135m-instruct"]
    assert smollm2["default"] and smollm2["path"] == str(smollm2_path)  # via $AFFEDGE_MODEL
    tasks = json.loads(cli("tasks", "list", "--json").stdout)
    assert {t["task"] for t in tasks} >= {"sentiment", "emotion", "sarcasm", "valence"}


def _bad_files(tmp_path):
    (tmp_path / "latin.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "cols.csv").write_text("review\nfine\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "ok.txt").write_text("fine\n")
    (tmp_path / "fake.gguf").write_bytes(b"not a model at all" * 100)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classify", "missing.txt"], "missing.txt: no such file"),
        (["classify", "latin.txt"], "latin.txt:2: byte 0xe9"),
        (["classify", "broken.jsonl"], "broken.jsonl:2: malformed JSON"),
        (["classify", "cols.csv"], "no column 'text'"),
        (["classify", "empty.txt"], "no items to annotate"),
        (["classify", "ok.txt", "--model", "fake.gguf"], "not a GGUF model"),
        (["classify", "ok.txt", "--model", "nosuchmodel"], "no model 'nosuchmodel'"),
        (["classify", "ok.txt", "--task", "valence"], "unknown task 'valence'"),
        (["score", "ok.txt", "--task", "sentiment"], "unknown task 'sentiment'"),
        (["classify", "ok.txt", "--resume"], "--resume needs --output"),
        (["classify", "ok.txt", "--labels", "one"], "at least two distinct"),
        (["eval", "--task", "polarity", "--dataset", "meld"], "no benchmark of task"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(cli, tmp_path, args, message):
    _bad_files(tmp_path)
    out = tmp_path / "out.jsonl"
    with_output = args[0] != "eval" and "--resume" not in args
    res = cli(*args, *(["-o", str(out)] if with_output else []), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and not partial_path(out).exists()


def test_truncated_model_file(cli, tmp_path, smollm2_path):
    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as src:
        cut.write_bytes(src.read(5_000_000))
    (tmp_path / "ok.txt").write_text("fine\n")
    res = cli("classify", "ok.txt", "--model", cut, "-o", "out.jsonl", cwd=tmp_path)
    assert res.returncode == 2 and "cannot load this GGUF model" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out.jsonl").exists()


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored and children inherit that; a user's
    # Ctrl-C reaches a foreground run, which is what this test stands for.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "affedge.cli", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _wait_for_records(path, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") > n:  # header + n records
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run produced no records")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_interruption_loses_and_duplicates_nothing(cli, tmp_path, how):
    # more items than one scoring batch (64), so the run writes in several bursts
    n = 150
    lines = [f"Item number {i}: {'great' if i % 2 else 'awful'} experience." for i in range(n)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    args = ["classify", "in.txt", "--threads", "2", "-q"]
    reference = cli(*args, "-o", "ref.jsonl", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "out.jsonl"
    proc = _start([*args, "-o", "out.jsonl"], tmp_path)
    _wait_for_records(partial_path(out), 5, proc)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    assert not out.exists() and partial_path(out).exists()
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "--resume" in err

    again = cli(*args, "-o", "out.jsonl", cwd=tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr

    resumed = cli(*args, "-o", "out.jsonl", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_text() == (tmp_path / "ref.jsonl").read_text()
    assert not partial_path(out).exists()
    assert [r["id"] for r in _jsonl(out.read_text())] == list(range(1, n + 1))

    other = cli("classify", "in.txt", "--task", "polarity", "-o", "out.jsonl", "--resume", "-q",
                cwd=tmp_path)  # fmt: skip
    assert other.returncode == 0 and "already complete" not in other.stderr


def test_resume_refuses_a_different_run(cli, tmp_path):
    (tmp_path / "in.txt").write_text("a\nb\n")
    part = partial_path(tmp_path / "out.jsonl")
    part.write_text(json.dumps({"affedge_partial": 1, "command": "classify",
                                "input": str(tmp_path / "in.txt"), "task": "emotion",
                                "labels": None, "model": "smollm2-135m-instruct",
                                "items": 2}) + "\n")  # fmt: skip
    res = cli("classify", "in.txt", "-o", "out.jsonl", "--resume", cwd=tmp_path)
    assert res.returncode == 2 and "task='emotion'" in res.stderr


FORBIDDEN_PROBE = """
import sys
attempts = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft", "bitsandbytes", "optimum"):
            attempts.append(name)
        return None
sys.meta_path.insert(0, Probe())
import affedge.cli
sys.argv = ["affedge", "classify", sys.argv[1], "-q"]
try:
    affedge.cli.main()
except SystemExit:
    pass
print("ATTEMPTS", attempts)
"""


def test_runtime_never_imports_training_libraries(reviews):
    """Even an attempted (guarded) import of a training library on the runtime path fails."""
    res = subprocess.run(
        [sys.executable, "-c", FORBIDDEN_PROBE, str(reviews)], capture_output=True, text=True
    )
    assert '"label"' in res.stdout, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "ATTEMPTS []"


@pytest.mark.parametrize("args", [["classify"], ["classify", "x.txt", "--threads", "0"]])
def test_usage_errors_exit_2_without_traceback(cli, args):
    res = cli(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "Error" in res.stderr
