"""Items/s of the single-process CLI versus `--ray` with 1 and 2 workers, on this machine.

SST-2 sentences (train, dev and test, repeated to ``--items`` lines) are written as JSONL:
one file for the single-process CLI and ``--shards`` shards for Ray. Every run is the real
command in a fresh process, timed from start to exit (imports, model loading and, for Ray,
starting a local cluster included), ``--reps`` times; the table gives the median. A run of
a one-line shard measures Ray's fixed cost (cluster start-up, actor start, model load), and
``steady items/s`` takes it out: items / (median wall - that fixed cost). Run:

    python -m affedge.bench.ray_scale --items 20000 --shards 4 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from affedge.bench.reporting import stamp, write_report
from affedge.datasets import data_root

RESULTS = Path(__file__).resolve().parent / "results"


def lscpu_model() -> str:
    """``lscpu | grep 'Model name'``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else "unknown"


def sst2_lines(n: int) -> list[str]:
    """``n`` SST-2 sentences (train, dev, test in file order, repeated as needed)."""
    texts = []
    for split in ("train", "dev", "test"):
        for line in (data_root() / "sst2" / f"stsa.binary.{split}").read_text().splitlines():
            texts.append(line.split(" ", 1)[1])
    return [texts[i % len(texts)] for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def timed(args: list[str], fresh: Path) -> float:
    """Wall seconds of one ``affedge ARGS`` run (``fresh``: its output, removed first)."""
    if fresh.is_dir():
        shutil.rmtree(fresh)
    fresh.unlink(missing_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "affedge.cli", *args], check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the built-in default model")
    parser.add_argument("--out", type=Path, default=RESULTS / "ray_scale")
    args = parser.parse_args(argv)
    texts = sst2_lines(args.items)
    model = ["-m", args.model] if args.model else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="affedge-ray-scale-") as tmp:
        work = Path(tmp)
        write_jsonl(work / "all.jsonl", texts)
        (work / "shards").mkdir()
        per = -(-len(texts) // args.shards)
        for i in range(args.shards):
            write_jsonl(work / "shards" / f"part-{i:04d}.jsonl", texts[i * per : (i + 1) * per])
        (work / "tiny").mkdir()
        write_jsonl(work / "tiny" / "one.jsonl", texts[:1])

        single = ["classify", str(work / "all.jsonl"), "-o", str(work / "out.jsonl"), "-q"]
        ray = ["classify", str(work / "shards"), "-o", str(work / "ray-out"), "--ray", "-q"]
        tiny = ["classify", str(work / "tiny"), "-o", str(work / "tiny-out"), "--ray", "-q"]
        # (name, items, cores, arguments, output); the reps go round all runs in turn, so a
        # change of load on this shared machine touches every run alike.
        n = len(texts)
        runs = [
            ("single process, --threads 1", n, 1, [*single, "--threads", "1"], "out.jsonl"),
            ("single process, --threads 2", n, 2, [*single, "--threads", "2"], "out.jsonl"),
            ("ray, one-line shard (fixed cost)", 1, 1, tiny, "tiny-out"),
            ("ray, 1 worker", n, 1, [*ray, "--workers", "1"], "ray-out"),
            ("ray, 2 workers", n, 2, [*ray, "--workers", "2"], "ray-out"),
        ]
        walls: dict[str, list[float]] = {name: [] for name, *_ in runs}
        for _ in range(args.reps):
            for name, _items, _cores, run, out in runs:
                walls[name].append(timed([*run, *model], work / out))
        for name, items, cores, *_ in runs:
            rows.append({"run": name, "items": items, "cores": cores, "walls_s": walls[name],
                         "median_s": statistics.median(walls[name])})  # fmt: skip
    ray_fixed = walls["ray, one-line shard (fixed cost)"]
    fixed = statistics.median(ray_fixed)
    for row in rows:
        row["items_per_s"] = row["items"] / row["median_s"]
        steady = row["median_s"] - (fixed if row["run"].startswith("ray") else 0.0)
        row["steady_items_per_s"] = row["items"] / steady if row["items"] > 1 else None
    report = {
        **stamp("ray_scale", argv, "ray", "onnxruntime"),
        "lscpu_model_name": lscpu_model(),
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "items": args.items,
        "shards": args.shards,
        "ray_fixed_cost_s": fixed,
        "runs": rows,
    }
    lines = [
        "# Single process vs Ray Data (`affedge classify ... --ray`)",
        "",
        f"`{report['command']}`, {report['date']}; CPU: {report['lscpu_model_name']} "
        f"({report['cpus']} cores); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in report['load_average_at_end'])} (other jobs share "
        f"this machine). {args.items} SST-2 sentences; Ray reads them as {args.shards} JSONL "
        f"shards. Wall time of the whole command (start-up included), median of {args.reps} "
        "(the runs take turns).",
        "",
        "| run | cores | median s | items/s | steady items/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        steady = f"{row['steady_items_per_s']:.0f}" if row["steady_items_per_s"] else ""
        lines.append(f"| {row['run']} | {row['cores']} | {row['median_s']:.1f} | "
                     f"{row['items_per_s']:.0f} | {steady} |")  # fmt: skip
    lines += [
        "",
        f"Ray's fixed cost here: {fixed:.1f} s (local cluster, actor, model). Steady items/s "
        "takes it out of the Ray runs.",
        "",
    ]
    write_report(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
