"""Benchmark harness logic against hand-computed values, report writing, CLI bad input.

Nothing here asserts a timing: measured numbers are only checked for shape.
"""

from __future__ import annotations

import json

import pytest

from affedge.bench.eval_all import eval_markdown, eval_points, plot_confusion, slug
from affedge.bench.harness import (
    add_roofline,
    agreement,
    bench_markdown,
    bench_points,
    forward_gflops,
    latency_summary,
    matmul_gflops,
    merge_runs,
    percentile,
    plot_quality_speed,
    ratio_rows,
)
from affedge.bench.peers import LexiconEngine, parse_answer, peer_specs
from affedge.bench.reporting import write_report
from affedge.errors import ModelError
from affedge.metrics import ece
from affedge.records import Record
from affedge.tasks import TASKS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------ ECE


def test_ece_hand_computed():
    # Bins of width 1/15. 0.95 and 0.97 share bin 15 (0.9333, 1]: accuracy 1/2, mean
    # confidence 0.96 -> gap 0.46 over 2 items. 0.55 and 0.58 share bin 9 (0.5333, 0.6]:
    # accuracy 1, confidence 0.565 -> gap 0.435 over 2 items. 0.2 sits alone in bin 3
    # (0.1333, 0.2]: accuracy 0, gap 0.2.  ECE = (2*0.46 + 2*0.435 + 0.2) / 5 = 0.398.
    conf = [0.95, 0.97, 0.55, 0.58, 0.2]
    hit = [True, False, True, True, False]
    assert ece(conf, hit) == pytest.approx(0.398)


def test_ece_limits():
    assert ece([1.0, 1.0], [True, True]) == 0.0
    assert ece([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    assert ece([0.0], [False]) == 0.0  # confidence 0 falls into the first bin
    assert ece([], []) == 0.0
    # Perfect calibration inside one bin: 0.7 confident, right 7 times out of 10.
    assert ece([0.7] * 10, [True] * 7 + [False] * 3) == pytest.approx(0.0)
    # Fewer bins merge the two groups: (0.6 right, 0.9 wrong) -> one bin, acc 0.5, conf 0.75.
    assert ece([0.6, 0.9], [True, False], bins=1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ece([0.5], [True, False])


def test_eval_report_carries_ece(monkeypatch):
    import affedge.evaluate as ev
    from affedge.engines import LabelResult
    from affedge.tasks import get_benchmark

    class Fixed(LexiconEngine):
        def __init__(self) -> None:
            self.name = "fixed"

        def classify(self, records, task, labels=None):
            for _ in records:
                yield LabelResult({"positive": 0.8, "negative": 0.2})

    records = [
        Record(id=str(i), text="x", labels={"sentiment": lab})
        for i, lab in enumerate(["positive"] * 3 + ["negative"])
    ]
    monkeypatch.setattr(ev, "load_dataset", lambda *a, **k: records)
    report = ev.evaluate(Fixed(), get_benchmark("polarity", "sst2"))
    # Always "positive" at 0.8, right 3 times of 4: |0.75 - 0.8| = 0.05.
    assert report.ece == pytest.approx(0.05)
    assert report.metrics["accuracy"] == pytest.approx(0.75)
    assert report.confusion["negative"]["positive"] == 1


# ------------------------------------------------------------------ harness arithmetic


def test_percentile_and_latency_summary():
    values = [0.010, 0.020, 0.030, 0.040, 0.100]
    assert percentile(values, 50) == pytest.approx(0.030)
    # p95: rank 0.95 * 4 = 3.8 -> 0.040 + 0.8 * (0.100 - 0.040) = 0.088
    assert percentile(values, 95) == pytest.approx(0.088)
    reps = [values, [0.02, 0.02, 0.02, 0.02, 0.02], [0.05, 0.05, 0.05, 0.05, 0.05]]
    # per-rep p50: 0.03, 0.02, 0.05 -> median 0.03; p95: 0.088, 0.02, 0.05 -> median 0.05
    assert latency_summary(reps) == {"latency_p50_ms": 30.0, "latency_p95_ms": 50.0}
    assert latency_summary([]) == {"latency_p50_ms": None, "latency_p95_ms": None}
    with pytest.raises(ValueError):
        percentile([], 50)


def test_gflops_arithmetic():
    # 2 * 1000^3 FLOPs in 0.5 s = 4 GFLOP/s
    assert matmul_gflops(1000, 0.5) == pytest.approx(4.0)
    # 10M params x 500 tokens/s x 2 = 10 GFLOP/s
    assert forward_gflops(10_000_000, 500.0) == pytest.approx(10.0)
    assert forward_gflops(None, 500.0) is None
    assert forward_gflops(10, None) is None
    results = [
        {"system": "affedge:m", "threads": 2, "params": 10_000_000, "tokens_per_s": 500.0},
        {"system": "vader", "threads": 2, "params": None, "tokens_per_s": None},
        {"system": "affedge:m", "threads": 1, "params": 10_000_000, "tokens_per_s": 500.0},
    ]
    add_roofline(results, {2: 40.0})
    assert results[0]["gflops"] == 10.0 and results[0]["peak_fraction"] == 0.25
    assert results[1]["gflops"] is None and results[1]["peak_fraction"] is None
    assert results[2]["gflops"] == 10.0 and results[2]["peak_fraction"] is None  # no peak


def _result(system, threads=2, items=10.0, p50=100.0, cold=2.0, rss=200.0, acc=0.8):
    return {
        "system": system,
        "threads": threads,
        "items_per_s": items,
        "latency_p50_ms": p50,
        "latency_p95_ms": p50 * 2,
        "cold_start_s": cold,
        "peak_rss_mb": rss,
        "accuracy": acc,
        "ece": 0.1,
        "tokens_per_s": 100.0,
        "items": 50,
    }


def test_ratio_rows_pairs_models_and_lexicons():
    results = [
        _result("affedge:a", items=30.0, p50=10.0, cold=1.0, rss=100.0, acc=0.9),
        _result("transformers:a", items=10.0, p50=40.0, cold=5.0, rss=400.0, acc=0.9),
        _result("generation:b", items=1.0),  # another model: not a peer of affedge:a
        _result("vader", items=3000.0, p50=0.5, cold=0.5, rss=50.0, acc=0.65),
        _result("vader", threads=1),  # other thread count: not compared
        {"system": "textblob", "threads": 2, "error": "exit 1"},  # failed: left out
    ]
    rows = ratio_rows(results)
    assert [(r["system"], r["peer"]) for r in rows] == [
        ("affedge:a", "transformers:a"),
        ("affedge:a", "vader"),
    ]
    tr, va = rows
    assert tr["speedup"] == 3.0 and tr["latency_x"] == 4.0
    assert tr["cold_start_x"] == 5.0 and tr["rss_x"] == 4.0 and tr["quality_delta"] == 0.0
    assert va["speedup"] == 0.01 and va["latency_x"] == 0.05 and va["quality_delta"] == 0.25


def test_merge_runs_takes_medians():
    runs = [
        _result("affedge:a", items=10.0, p50=30.0, cold=3.0, rss=100.0),
        _result("affedge:a", items=30.0, p50=10.0, cold=1.0, rss=120.0),
        _result("affedge:a", items=20.0, p50=20.0, cold=9.0, rss=110.0),
    ]
    merged = merge_runs("affedge:a", 2, runs)
    assert merged["items_per_s"] == 20.0 and merged["latency_p50_ms"] == 20.0
    assert merged["cold_start_s"] == 3.0 and merged["peak_rss_mb"] == 120.0
    assert merged["items_per_s_runs"] == [10.0, 30.0, 20.0] and merged["reps"] == 3
    failed = merge_runs("x", 1, [runs[0], {"error": "exit 1: boom"}])
    assert failed == {"system": "x", "threads": 1, "error": "exit 1: boom"}


def test_agreement_and_answer_parsing():
    assert agreement(["a", "b", "a", "a"], ["a", "b", "b", "a"]) == 0.75
    assert agreement(["a"], ["a", "b"]) is None
    labels = ("positive", "negative", "neutral")
    assert parse_answer(" Positive.", labels) == "positive"
    assert parse_answer("I think it is negative", labels) == "negative"
    assert parse_answer("no idea", labels) == "<unparsed>"
    assert parse_answer("not sarcastic", ("sarcastic", "not sarcastic")) == "not sarcastic"


def test_peer_specs():
    peers = ("vader", "textblob", "transformers", "generation")
    assert peer_specs("g", "gguf", peers, has_source=False) == ["transformers:g", "generation:g"]
    assert peer_specs("e", "onnx", peers, has_source=True) == ["transformers:e"]
    both = ("transformers", "transformers-sorted")  # as users run it, and length-sorted
    assert peer_specs("g", "gguf", both, False) == ["transformers:g", "transformers-sorted:g"]
    assert peer_specs("e", "onnx", both, True) == ["transformers:e", "transformers-sorted:e"]
    assert peer_specs("e", "onnx", both, False) == []
    assert peer_specs("e", "onnx", peers, has_source=False) == []


def test_lexicon_peers_label_sentiment_only():
    pytest.importorskip("vaderSentiment")
    vader = LexiconEngine("vader")
    recs = [
        Record(id="1", text="What a wonderful, lovely film!"),
        Record(id="2", text="Terrible, awful and boring."),
        Record(id="3", text="The train leaves at noon."),
    ]
    out = [r.label for r in vader.classify(recs, TASKS["sentiment"])]
    assert out == ["positive", "negative", "neutral"]
    binary = [r.label for r in vader.classify(recs, TASKS["polarity"])]
    assert binary == ["positive", "negative", "positive"]  # no neutral: the sign decides
    with pytest.raises(ModelError):
        list(vader.classify(recs, TASKS["emotion"]))
    with pytest.raises(ModelError):
        LexiconEngine("afinn")


# ------------------------------------------------------------------ report writing


def _bench_report():
    results = [
        {**_result("affedge:a", items=30.0), "params": 1000, "tokens_per_s": 100.0},
        {**_result("vader", items=3000.0), "ece": None},
        {"system": "transformers:a", "threads": 2, "error": "exit 1: no torch"},
    ]
    add_roofline(results, {2: 10.0})
    return {
        "command": "affedge bench",
        "date": "2025-01-01",
        "machine": {"cpu": "test cpu", "cores_usable": 2},
        "load_average": [0.1, 0.1, 0.1],
        "items": "sst2 test (polarity), first 50 items",
        "threads": [2],
        "reps": 3,
        "latency_items": 10,
        "sgemm": {"2": {"n": 64, "gflops": 10.0, "gflops_runs": [9.0, 10.0, 11.0]}},
        "results": results,
        "ratios": ratio_rows(results),
    }


def test_bench_report_files(tmp_path):
    report = _bench_report()
    md = bench_markdown(report)
    assert "| affedge:a | vader | 2 | 0.01 | 1 |" in md
    assert "failed: exit 1: no torch" in md
    assert "10.0 GFLOP/s" in md
    png = plot_quality_speed(bench_points(report), tmp_path / "q.png", "title")
    write_report(tmp_path / "bench", report, md)
    assert json.loads((tmp_path / "bench.json").read_text())["ratios"][0]["peer"] == "vader"
    assert (tmp_path / "bench.md").read_text() == md
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_eval_report_files(tmp_path):
    from affedge.bench.eval_all import write_eval

    confusion = {
        "positive": {"positive": 3, "negative": 1},
        "negative": {"positive": 0, "negative": 2},
    }
    row = {
        "task": "polarity",
        "dataset": "sst2",
        "split": "test",
        "n": 6,
        "metric": "accuracy",
        "metrics": {"accuracy": 5 / 6},
        "items_per_s": 100.0,
        "ece": 0.1,
        "ece_raw": 0.25,
        "temperature": 1.5,
        "reliability": {"raw": [(0.9, 0.8, 4), (0.6, 0.5, 2)], "calibrated": [(0.8, 0.8, 6)]},
        "confusion": confusion,
    }
    uncalibrated = {"ece": None, "ece_raw": None, "temperature": None, "reliability": {}}
    result = {
        "model": "my/model.gguf",
        "split": "test",
        "limit": 6,
        "results": [
            {"system": "my/model.gguf", **row},
            {"system": "vader", **row, **uncalibrated, "items_per_s": 5000.0},
            {
                "system": "my/model.gguf",
                **row,
                "task": "valence",
                "metric": "pearson",
                "metrics": {"pearson": 0.5},
                **uncalibrated,
                "confusion": {},
            },
        ],
        "skipped": [{"system": "my/model.gguf", "benchmark": "x/y", "reason": "no head"}],
    }
    files = write_eval(result, tmp_path)
    name = slug("my/model.gguf")
    assert name == "my_model_gguf"  # no dots: write_report adds the suffix
    data = json.loads(files["json"].read_text())
    assert data["plots"]["confusion"]
    md = files["md"].read_text()
    assert (
        "| my/model.gguf | polarity | sst2 | accuracy | 0.8333 | 0.8333 | 0.1000 | 0.2500 | "
        "1.500 | 6 |" in md
    )
    reliability = data["plots"]["confusion"]["reliability|my/model.gguf|polarity/sst2"]
    assert (tmp_path / reliability).stat().st_size > 1000 and f"[png]({reliability})" in md
    assert "x/y: no head" in md
    pngs = list((tmp_path / f"eval_{name}").glob("*.png"))
    # one classification benchmark of the model: its confusion matrix and reliability
    # diagram; peers get none
    assert len(pngs) == 2
    for png in [*pngs, files["plot"]]:
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert len(eval_points(result)) == 3
    assert eval_markdown(result).count("\n|") >= 4
    assert plot_confusion(confusion, "t", tmp_path / "c.png").is_file()


# ------------------------------------------------------------------ CLI bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "--models", "no-such-model", "--peers", "vader"], "no model 'no-such-model'"),
        (["bench", "--input", "missing.txt"], "missing.txt: no such input file"),
        (["bench", "--threads", "two"], "--threads needs comma-separated integers"),
        (["bench", "--peers", "sklearn", "--models", "minilm-affect-int8"], "unknown peer"),
        (["eval", "--all", "--task", "polarity"], "--all evaluates every benchmark"),
        (["eval"], "eval needs --task and --dataset, or --all"),
        (["eval", "--all", "--model", "no-such-model"], "no model 'no-such-model'"),
    ],
)
def test_cli_bad_input(cli, tmp_path, args, message):
    res = cli(*args, "--out", tmp_path) if args[0] == "bench" else cli(*args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


TORCH_PROBE = """
import sys
attempts = []
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft"):
            attempts.append(name)
        return None
sys.meta_path.insert(0, Probe())
from affedge.bench import worker
worker.main(["--system", sys.argv[1], "--threads", "1", "--n", "3", "--reps", "1",
             "--latency-n", "1"])
print("ATTEMPTS", attempts)
"""


@pytest.mark.parametrize("system", ["affedge:minilm-affect-int8", "vader"])
def test_bench_without_transformers_peer_never_imports_torch(data_dir, system):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, system], capture_output=True, text=True, timeout=120
    )
    assert "AFFEDGE_BENCH_RESULT" in res.stdout, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "ATTEMPTS []"
