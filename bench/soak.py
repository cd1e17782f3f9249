"""Soak: does ``affedge classify`` run in bounded memory over a million lines? (issue 15, item 6)

The input is real benchmark text: the SST-2 and TweetEval (sentiment, emotion, irony) texts of
every split from ``$AFFEDGE_DATA`` (default ``../shared/data``), shuffled with a fixed seed
(so any prefix has the mix of lengths of the whole) and repeated in that order until the input
has ``--lines`` lines (``examples/reviews.txt`` when no data folder is found). Two runs
of the default model, each a subprocess exactly as a user starts it::

    python -m affedge.cli classify input.txt -o out.jsonl [--threads N]

one on the first ``--small`` lines (10,000) and one on all of them (the same texts, the same
order: the small input is the large one's head). For each: peak RSS (the
child's ``ru_maxrss`` from ``wait4``, exact, plus the RSS sampled every ``--sample`` seconds
with psutil, a timeline to see growth), wall time, items/s (wall, and the CLI's own rate over
the annotation loop), and a check of the output: one record per line, ids 1..N in order, each
line JSON with a label of the task's label set. The goal is a 1M-line peak within 10 % of
the 10k-line peak.

    python -m affedge.bench.soak --lines 1000000

writes bench/results/soak.{md,json}. A benchmark, not a test: it takes tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
SOURCES = ("sst2", "tweet_eval_sentiment", "tweet_eval_emotion", "tweet_eval_irony")
#: The CLI's summary line: "affedge: N items classified in S s (R items/s) with MODEL ...".
_SUMMARY = re.compile(r"(\d+) items classified in ([\d.]+) s \(([\d.]+) items/s\)")


def source_texts() -> tuple[list[str], str]:
    """Distinct one-line texts of the soak's sources, and where they came from."""
    texts: list[str] = []
    used: list[str] = []
    try:
        from affedge.datasets import DATASETS, load_dataset

        for name in SOURCES:
            for split in DATASETS[name].splits:
                before = len(texts)
                texts.extend(" ".join(r.text.split()) for r in load_dataset(name, split))
                used.append(f"{name}/{split} ({len(texts) - before})")
    except Exception as exc:  # no dataset folder: the shipped examples
        sample = (REPO / "examples" / "reviews.txt").read_text(encoding="utf-8").splitlines()
        return [t for t in sample if t.strip()], f"examples/reviews.txt ({exc})"
    texts = [t for t in texts if t]
    random.Random(0).shuffle(texts)
    return texts, ", ".join(used)


def write_input(path: Path, texts: list[str], lines: int) -> None:
    """``lines`` lines: ``texts`` in order, repeated."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            fh.write(texts[i % len(texts)] + "\n")


def _head(src: Path, dst: Path, lines: int) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        for i, line in enumerate(fin):
            if i >= lines:
                break
            fout.write(line)


def check_output(path: Path, lines: int, labels: set[str]) -> dict[str, Any]:
    """Stream the output: records, ids 1..N in order, labels in the label set."""
    count = bad_id = bad_label = bad_json = 0
    with path.open(encoding="utf-8") as fh:
        for count, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except ValueError:
                bad_json += 1
                continue
            bad_id += row.get("id") != count
            bad_label += row.get("label") not in labels
    ok = count == lines and not (bad_id or bad_label or bad_json)
    return dict(records=count, bad_ids=bad_id, bad_labels=bad_label, bad_json=bad_json, ok=ok)


def _rss_tree(proc: Any) -> int:
    """RSS of a psutil process and its children (0 once it is gone)."""
    import psutil

    try:
        rss = proc.memory_info().rss
        for child in proc.children(recursive=True):
            rss += child.memory_info().rss
        return int(rss)
    except psutil.Error:
        return 0


def soak_run(
    src: Path, out: Path, lines: int, threads: int | None, sample: float, labels: set[str]
) -> dict[str, Any]:
    """One ``affedge classify`` subprocess over ``src``: memory, speed, output check."""
    import psutil

    cmd = [sys.executable, "-m", "affedge.cli", "classify", str(src), "-o", str(out)]
    if threads:
        cmd += ["--threads", str(threads)]
    err_path = out.with_suffix(".stderr")
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        watched = psutil.Process(proc.pid)
        timeline: list[dict[str, Any]] = []
        part = out.with_name(out.name + ".partial")
        status = None
        while status is None:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                status = None
                elapsed = time.perf_counter() - started
                size = part.stat().st_size if part.exists() else 0
                rss = _rss_tree(watched)
                if rss:
                    timeline.append(dict(s=round(elapsed, 1), rss_mb=rss / 2**20, partial=size))
                time.sleep(sample)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    stderr_text = err_path.read_text(encoding="utf-8", errors="replace").strip()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {stderr_text}")
    summary = _SUMMARY.search(stderr_text)
    check = check_output(out, lines, labels)
    sampled = max((t["rss_mb"] for t in timeline), default=0.0)
    return {
        "lines": lines,
        "command": " ".join(["affedge", *cmd[3:]]),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "peak_rss_sampled_mb": round(sampled, 1),
        "seconds": round(seconds, 1),
        "items_per_s": round(lines / seconds, 1),
        "loop_items_per_s": float(summary.group(3)) if summary else None,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "load_avg_start": round(load_start, 2),
        "load_avg_end": round(os.getloadavg()[0], 2),
        "output_mb": round(out.stat().st_size / 2**20, 1),
        "check": check,
        "stderr": stderr_text[-500:],
        "rss_timeline": _thin(timeline, 40),
    }


def _thin(timeline: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """At most ``most`` evenly spaced samples (the last one kept), RSS rounded."""
    step = max(1, len(timeline) // most)
    kept = timeline[::step]
    if timeline and kept[-1] is not timeline[-1]:
        kept.append(timeline[-1])
    return [{**t, "rss_mb": round(t["rss_mb"], 1)} for t in kept]


def run(
    lines: int, small: int, threads: int | None, sample: float, work: Path | None
) -> dict[str, Any]:
    from affedge.tasks import get_task

    labels = set(get_task("sentiment", "classify").labels)
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="affedge-soak-")) if work is None else work
    try:
        texts, sources = source_texts()
        big = work / f"input-{lines}.txt"
        write_input(big, texts, lines)
        little = work / f"input-{small}.txt"
        _head(big, little, small)
        runs = []
        for src, n in ((little, small), (big, lines)):
            out = work / f"out-{n}.jsonl"
            print(f"soak: classify {n} lines ...", file=sys.stderr, flush=True)
            result = soak_run(src, out, n, threads, sample, labels)
            print(f"soak: {json.dumps({k: v for k, v in result.items() if k != 'rss_timeline'})}",
                  file=sys.stderr, flush=True)  # fmt: skip
            runs.append(result)
            out.unlink()
        ratio = runs[1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
        return {
            "model": "minilm-affect-int8 (the default)",
            "task": "sentiment",
            "sources": sources,
            "distinct_texts": len(texts),
            "input_mb": round(big.stat().st_size / 2**20, 1),
            "runs": runs,
            "peak_ratio": round(ratio, 4),
            "within_10_percent": ratio <= 1.10,
            "outputs_ok": all(r["check"]["ok"] for r in runs),
        }
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = [
        "| lines | peak RSS (wait4) | peak RSS (sampled) | wall s | items/s (wall) "
        "| items/s (loop) | CPU s | load avg start/end | output | records/ids/labels |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in report["runs"]:
        c = r["check"]
        verdict = "ok" if c["ok"] else f"FAIL {c}"
        rows.append(
            f"| {r['lines']:,} | {r['peak_rss_mb']} MB | {r['peak_rss_sampled_mb']} MB "
            f"| {r['seconds']} | {r['items_per_s']} | {r['loop_items_per_s']} "
            f"| {r['cpu_seconds']} | {r['load_avg_start']}/{r['load_avg_end']} "
            f"| {r['output_mb']} MB | {c['records']:,} {verdict} |"
        )
    big = report["runs"][-1]
    timeline = ", ".join(f"{t['s']:.0f}s {t['rss_mb']:.0f}MB" for t in big["rss_timeline"])
    goal = "met" if report["within_10_percent"] else "MISSED"
    return "\n".join(
        [
            f"# Soak: the default model over {big['lines']:,} lines",
            "",
            f"`{report['command']}` on {report['date']}: {m['cpu']} ({m['cores_usable']} usable "
            f"cores, shared with other jobs), {m['os']}, Python {m['python']}.",
            "",
            f"Input: {report['input_mb']} MB of {report['distinct_texts']:,} distinct texts "
            f"repeated ({report['sources']}). Model: {report['model']}, task "
            f"{report['task']}. Each run: `{big['command']}` as a subprocess.",
            "",
            *rows,
            "",
            f"Peak RSS ratio (largest / 10k-line run): **{report['peak_ratio']}** "
            f"(goal <= 1.10: {goal}). Every output checked: "
            f"{'one record per line, ids 1..N in order, labels in the label set' if report['outputs_ok'] else 'FAILED'}.",  # noqa: E501
            "",
            f"RSS over the largest run (sampled): {timeline}.",
            "",
            *([f"Note: {report['note']}", ""] if report.get("note") else []),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000, help="the baseline run's lines")
    parser.add_argument("--threads", type=int, default=None, help="passed to classify")
    parser.add_argument("--sample", type=float, default=1.0, help="RSS sampling period (s)")
    parser.add_argument("--work", type=Path, default=None, help="keep the files here")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak")
    parser.add_argument("--note", default="", help="recorded with the result")
    args = parser.parse_args(argv)
    if args.small > args.lines:
        parser.error("--small must not exceed --lines")
    result = run(args.lines, args.small, args.threads, args.sample, args.work)
    report = {**stamp("soak", list(argv) if argv is not None else None, "onnxruntime"), **result}
    if args.note:
        report["note"] = args.note
    write_report(args.out, report, markdown(report))
    sys.exit(0 if result["outputs_ok"] else 1)


if __name__ == "__main__":
    main()
