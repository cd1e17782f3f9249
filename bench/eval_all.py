"""`affedge eval --all`: every registry benchmark a model can do, with calibration and plots.

For each task x dataset of :data:`affedge.tasks.BENCHMARKS` the model is evaluated with the
literature's metric (:func:`affedge.evaluate.evaluate`); benchmarks the model cannot answer
(an encoder has no head for the task or the dataset's labels, a dataset is missing) are
listed as skipped with the reason. Classification benchmarks get the expected calibration
error beside their metric and a confusion-matrix PNG. The lexicon peers (VADER, TextBlob) are
evaluated on the benchmarks they can do, on the same items, and everything lands in one plot
of quality against items/s.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import save_figure
from affedge.errors import AffedgeError
from affedge.tasks import BENCHMARKS, Benchmark


def slug(name: str) -> str:
    """A file-name-safe version of a model or benchmark name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "model"


def _run(engine: Any, bench: Benchmark, split: str, limit: int | None, data_dir: Path | None):
    from affedge.evaluate import evaluate

    try:
        return evaluate(engine, bench, split, limit, data_dir), None
    except AffedgeError as exc:
        return None, str(exc)


def eval_all(
    model: str | None,
    limit: int | None = None,
    out: Path | None = None,
    data_dir: Path | None = None,
    threads: int | None = None,
    peers: Sequence[str] = ("vader", "textblob"),
    split: str = "test",
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    device: str = "auto",
    gpu_layers: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``peers``) on every benchmark; write JSON, markdown and PNGs
    under ``out`` when given. Returns the report dict. ``device``, ``gpu_layers``: where the
    model runs (affedge/device.py)."""
    from affedge.bench.peers import open_system
    from affedge.engines import open_engine
    from affedge.models import resolve_model

    ref = resolve_model(model)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with open_engine(ref, threads=threads, device=device, gpu_layers=gpu_layers) as engine:
        for bench in BENCHMARKS:
            log(f"eval: {ref.name} {bench.name}")
            report, why = _run(engine, bench, split, limit, data_dir)
            if report is None:
                skipped.append({"system": ref.name, "benchmark": bench.name, "reason": why or ""})
                continue
            rows.append({"system": ref.name, **report.to_dict()})
    for peer in peers:
        try:
            system = open_system(peer)
        except ImportError as exc:  # the bench extra is not installed
            skipped.append({"system": peer, "benchmark": "*", "reason": f"not installed ({exc})"})
            continue
        for bench in BENCHMARKS:
            if bench.task not in ("sentiment", "polarity"):
                continue
            report, why = _run(system, bench, split, limit, data_dir)
            if report is None:
                skipped.append({"system": peer, "benchmark": bench.name, "reason": why or ""})
                continue
            row = {"system": peer, **report.to_dict()}
            # hard labels: calibration is not defined
            row.update(ece=None, ece_raw=None, temperature=None, reliability={})
            rows.append(row)
    result: dict[str, Any] = {
        "model": ref.name,
        "model_path": str(ref.path),
        "split": split,
        "limit": limit,
        "results": rows,
        "skipped": skipped,
    }
    if out is not None:
        write_eval(result, out)
    return result


def eval_markdown(result: dict[str, Any], images: dict[str, str] | None = None) -> str:
    """The eval report as markdown: one row per system x benchmark."""
    images = images or {}
    limit = result["limit"]
    lines = [
        f"# affedge eval --all: {result['model']}",
        "",
        f"{result['split']} splits, "
        + (f"first {limit} scored items per benchmark" if limit else "every item")
        + ", the literature's metric per benchmark; ECE: expected calibration error of the "
        "top label's probability (15 equal-width bins; empty for score tasks and for "
        "hard-label peers) with the model's fitted temperature T (`affedge export calibrate`), "
        "and of the raw softmax; labels are the same either way.",
        "",
        "| system | task | dataset | metric | value | accuracy | ECE | ECE raw | T | n | items/s "
        "| confusion | reliability |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["results"]:
        acc = r["metrics"].get("accuracy")
        ece = r.get("ece")
        key = f"{r['system']}|{r['task']}/{r['dataset']}"
        img = f"[png]({images[key]})" if key in images else ""
        rel = f"[png]({images['reliability|' + key]})" if "reliability|" + key in images else ""
        raw, t = r.get("ece_raw"), r.get("temperature")
        lines.append(
            f"| {r['system']} | {r['task']} | {r['dataset']} | {r['metric']} | "
            f"{r['metrics'][r['metric']]:.4f} | {_num(acc)} | {_num(ece)} | {_num(raw)} | "
            f"{_num(t, 3)} | {r['n']} | {r['items_per_s']:.1f} | {img} | {rel} |"
        )
    if result["skipped"]:
        lines += ["", "Skipped (the system cannot answer them):", ""]
        for s in result["skipped"]:
            lines.append(f"- {s['system']} {s['benchmark']}: {s['reason']}")
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def plot_reliability(diagrams: dict[str, list], title: str, path: Path) -> Path:
    """A reliability diagram: accuracy against mean confidence per bin, raw and calibrated
    (marker area ~ items in the bin); the diagonal is perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for name, color in (("raw", "tab:orange"), ("calibrated", "tab:blue")):
        rows = diagrams.get(name) or []
        if rows:
            conf, acc, n = zip(*rows, strict=True)
            total = sum(n)
            ax.plot(conf, acc, color=color, lw=1.2, label=name)
            ax.scatter(conf, acc, s=[8 + 300 * k / total for k in n], color=color, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_confusion(confusion: dict[str, dict[str, int]], title: str, path: Path) -> Path:
    """A confusion-matrix heat map (rows gold, columns predicted), counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(confusion)
    grid = np.array([[confusion[g][p] for p in labels] for g in labels])
    size = 2.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    im = ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    top = grid.max() or 1
    for i in range(len(labels)):
        for j in range(len(labels)):
            color = "white" if grid[i, j] > top / 2 else "black"
            ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def eval_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Plot points: each system's headline metric on each benchmark against its items/s."""
    return [
        {
            "label": f"{r['system']} {r['dataset']}",
            "items_per_s": r["items_per_s"],
            "quality": r["metrics"][r["metric"]],
            "group": r["system"],
        }
        for r in result["results"]
    ]


def write_eval(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """``eval_<model>.json`` / ``.md``, confusion PNGs and the quality-vs-speed PNG."""
    from affedge.bench.harness import plot_quality_speed
    from affedge.bench.reporting import write_report

    name = slug(result["model"])
    images: dict[str, str] = {}
    folder = out / f"eval_{name}"
    for r in result["results"]:
        if r.get("confusion") and r["system"] == result["model"]:
            png = folder / f"confusion_{slug(r['task'])}_{slug(r['dataset'])}.png"
            title = f"{r['system']}: {r['task']} / {r['dataset']} (n={r['n']})"
            plot_confusion(r["confusion"], title, png)
            images[f"{r['system']}|{r['task']}/{r['dataset']}"] = str(png.relative_to(out))
        if r.get("reliability") and r["system"] == result["model"]:
            png = folder / f"reliability_{slug(r['task'])}_{slug(r['dataset'])}.png"
            title = f"{r['system']}: {r['task']} / {r['dataset']} (n={r['n']})"
            plot_reliability(r["reliability"], title, png)
            key = f"reliability|{r['system']}|{r['task']}/{r['dataset']}"
            images[key] = str(png.relative_to(out))
    plot = plot_quality_speed(
        eval_points(result),
        out / f"eval_{name}_quality_vs_speed.png",
        f"{result['model']} and lexicon peers: headline metric vs items/s per benchmark",
        ylabel="headline metric",
    )
    result["plots"] = {"quality_vs_speed": str(plot.relative_to(out)), "confusion": images}
    write_report(out / f"eval_{name}", result, eval_markdown(result, images))
    return {"json": out / f"eval_{name}.json", "md": out / f"eval_{name}.md", "plot": plot}
