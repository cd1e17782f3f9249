"""Speed and footprint of affedge's engines against their peers, on the same inputs.

For every system (see :mod:`affedge.bench.peers`) and thread count, a fresh worker process
(:mod:`affedge.bench.worker`) measures cold start (spawn -> first item labelled: interpreter,
imports, model load, one item), per-item latency (p50/p95 over ``latency_n`` single-item
calls), batch items/s and tokens/s, accuracy and ECE on the inputs when they are labelled, and
its peak RSS. Every measurement is repeated ``reps`` times, each repetition a fresh process and the
repetitions taken in rounds over all systems, and the median is quoted. A sgemm
worker measures the machine's float32 matmul throughput at the same thread count, the
roofline against which each engine's achieved GFLOP/s (2 x forward params x tokens/s) is
set. Ratios against the peers are the headline: they are taken within one run, on one
machine, under the same load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affedge.bench.reporting import save_figure
from affedge.errors import AffedgeError

RESULTS = Path(__file__).resolve().parent / "results"
SGEMM_N = 1024

# ------------------------------------------------------------------ arithmetic (tested)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_summary(reps: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """Median over repetitions of each repetition's p50 and p95 single-item latency (ms)."""
    reps = [r for r in reps if r]
    if not reps:
        return {"latency_p50_ms": None, "latency_p95_ms": None}
    p50 = statistics.median(percentile(r, 50) for r in reps)
    p95 = statistics.median(percentile(r, 95) for r in reps)
    return {"latency_p50_ms": round(p50 * 1000, 3), "latency_p95_ms": round(p95 * 1000, 3)}


def matmul_gflops(n: int, seconds: float) -> float:
    """GFLOP/s of one n x n by n x n matmul taking ``seconds`` (2 n^3 floating-point ops)."""
    return 2.0 * n**3 / seconds / 1e9


def forward_gflops(params: int | None, tokens_per_s: float | None) -> float | None:
    """Achieved GFLOP/s of a forward pass: 2 FLOPs (multiply + add) per parameter per token."""
    if not params or not tokens_per_s:
        return None
    return 2.0 * params * tokens_per_s / 1e9


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b to three significant digits (None when either is missing or zero)."""
    return float(f"{a / b:.3g}") if a and b else None


def ratio_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each affedge system against each peer at the same thread count.

    ``speedup`` is items/s over the peer's; ``latency_x`` the peer's p50 latency over ours;
    ``cold_start_x`` and ``rss_x`` the peer's over ours (above 1: affedge is better);
    ``quality_delta`` our accuracy minus the peer's on the same items. A peer tied to a model
    (``transformers:M``, ``generation:M``) is compared with ``affedge:M`` only; the lexicon
    peers with every affedge system.
    """
    ok = [r for r in results if "error" not in r]
    rows = []
    for ours in ok:
        kind, _, model = ours["system"].partition(":")
        if kind != "affedge":
            continue
        for peer in ok:
            pkind, _, pmodel = peer["system"].partition(":")
            if pkind == "affedge" or peer["threads"] != ours["threads"]:
                continue
            if pmodel and pmodel != model:
                continue
            qa, qb = ours.get("accuracy"), peer.get("accuracy")
            delta = round(qa - qb, 4) if qa is not None and qb is not None else None
            rows.append(
                {
                    "system": ours["system"],
                    "peer": peer["system"],
                    "threads": ours["threads"],
                    "speedup": _ratio(ours["items_per_s"], peer["items_per_s"]),
                    "latency_x": _ratio(peer["latency_p50_ms"], ours["latency_p50_ms"]),
                    "cold_start_x": _ratio(peer["cold_start_s"], ours["cold_start_s"]),
                    "rss_x": _ratio(peer["peak_rss_mb"], ours["peak_rss_mb"]),
                    "quality_delta": delta,
                }
            )
    return rows


def agreement(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Share of items two systems label alike (None if they saw different item counts)."""
    if not a or len(a) != len(b):
        return None
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / len(a), 4)


#: Measurements whose median over repetitions is quoted.
MEDIAN_KEYS = (
    "cold_start_s", "load_s", "latency_p50_ms", "latency_p95_ms", "items_per_s", "tokens_per_s",
)  # fmt: skip


def merge_runs(system: str, threads: int, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from a system's repetitions: the median of each timing, the largest peak
    RSS, the per-repetition values kept; quality and token counts from the first run (the
    engines are deterministic). A failed repetition makes the result a failure."""
    failed = [r for r in runs if "error" in r]
    if failed or not runs:
        error = failed[0]["error"] if failed else "no runs"
        return {"system": system, "threads": threads, "error": error}
    merged = {**runs[0], "system": system, "threads": threads, "reps": len(runs)}
    for key in MEDIAN_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        merged[key] = round(statistics.median(values), 3) if values else None
        merged[f"{key}_runs"] = [r.get(key) for r in runs]
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    merged["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in runs), 1)
    return merged


def add_roofline(results: list[dict[str, Any]], peaks: dict[int, float]) -> None:
    """Attach achieved GFLOP/s and its fraction of the sgemm peak at the same thread count."""
    for r in results:
        achieved = forward_gflops(r.get("params"), r.get("tokens_per_s"))
        peak = peaks.get(r["threads"])
        r["gflops"] = round(achieved, 2) if achieved is not None else None
        r["peak_fraction"] = round(achieved / peak, 4) if achieved is not None and peak else None


# ------------------------------------------------------------------ running workers


def _worker(args: list[str], threads: int, timeout: float) -> dict[str, Any]:
    from affedge.bench.worker import MARKER

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    spawned = time.time()
    cmd = [sys.executable, "-m", "affedge.bench.worker", "--threads", str(threads), *args]
    cmd += ["--spawned", repr(spawned)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def run_bench(
    models: Sequence[str],
    threads: Sequence[int] = (2,),
    peers: Sequence[str] | None = None,
    n: int = 200,
    reps: int = 3,
    latency_n: int = 30,
    input_file: Path | None = None,
    task: str = "polarity",
    dataset: str = "sst2",
    sources: dict[str, Path] | None = None,
    data_dir: Path | None = None,
    timeout: float = 1800,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Benchmark ``models`` and their ``peers``; returns the report dict (see module doc)."""
    from affedge.bench.peers import PEERS, peer_specs, torch_source
    from affedge.bench.reporting import machine_info
    from affedge.models import resolve_model

    peers = PEERS if peers is None else peers
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise AffedgeError(f"unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)}")
    if input_file is not None and not input_file.is_file():
        raise AffedgeError(f"{input_file}: no such input file")
    sources = sources or {}
    systems: list[str] = []
    for model in models:
        ref = resolve_model(model)  # unknown models fail here, before any work
        systems.append(f"affedge:{model}")
        has_source = torch_source(ref, sources) is not None
        systems += peer_specs(model, ref.format, peers, has_source)
    systems += [p for p in peers if p in ("vader", "textblob")]

    common = ["--n", str(n), "--reps", "1", "--latency-n", str(latency_n)]
    common += ["--task", task]
    common += ["--input", str(input_file)] if input_file else ["--dataset", dataset]
    if data_dir is not None:
        common += ["--data-dir", str(data_dir)]
    for key, path in sources.items():
        common += ["--source", f"{key}={path}"]

    peaks: dict[int, float] = {}
    sgemm: dict[int, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for t in threads:
        log(f"bench: sgemm {SGEMM_N} on {t} threads")
        sgemm[t] = _worker(["--sgemm", str(SGEMM_N), "--reps", "5"], t, timeout)
        if "gflops" in sgemm[t]:
            peaks[t] = sgemm[t]["gflops"]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        # Repetitions are rounds over every system, each a fresh process, so that a change in
        # the load of shared cores during the run hits every system alike.
        for rep in range(reps):
            for system in systems:
                if runs[system] and "error" in runs[system][-1]:
                    continue
                log(f"bench: {system} on {t} threads, repetition {rep + 1}/{reps}")
                started = time.perf_counter()
                res = _worker(["--system", system, *common], t, timeout)
                res["wall_s"] = round(time.perf_counter() - started, 1)
                if "error" in res:
                    log(f"bench: {system}: {res['error']}")
                runs[system].append(res)
        for system in systems:
            results.append(merge_runs(system, t, runs[system]))
    add_roofline(results, peaks)
    by_key = {(r["system"], r["threads"]): r for r in results if "predictions" in r}
    for r in results:
        model = r["system"].partition(":")[2]
        ours = by_key.get((f"affedge:{model}", r["threads"]))
        if ours is not None and ours is not r and "predictions" in r:
            r["agreement_with_affedge"] = agreement(ours["predictions"], r["predictions"])
    for r in results:
        r.pop("predictions", None)
    items = (
        f"{input_file}, first {n}" if input_file else f"{dataset} test ({task}), first {n} items"
    )
    return {
        "machine": machine_info(
            "onnxruntime",
            "llama-cpp-python",
            "torch",
            "transformers",
            "numpy",
            "vaderSentiment",
            "textblob",
        ),
        "load_average": _load_average(),
        "items": items,
        "task": task,
        "threads": list(threads),
        "reps": reps,
        "latency_items": latency_n,
        "sgemm": {str(k): v for k, v in sgemm.items()},
        "results": results,
        "ratios": ratio_rows(results),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------ writing


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _g(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def bench_markdown(report: dict[str, Any]) -> str:
    """The bench report as markdown: headline ratios, then every measurement."""
    m = report["machine"]
    lines = [
        "# affedge bench: engines against peers",
        "",
        f"`{report.get('command', 'affedge bench')}` on {report.get('date', '')}; {m['cpu']} "
        f"({m['cores_usable']} usable cores), load average at the start "
        f"{report.get('load_average')}. Inputs: {report['items']}; median of {report['reps']} "
        f"repetitions (each a fresh process, in rounds over all systems); latency over the "
        f"first {report['latency_items']} items one at a time.",
        "",
        "## Headline: affedge against its peers (same run, same inputs, same threads)",
        "",
        "Above 1: affedge is better (faster, quicker to start, smaller). quality delta is "
        "affedge's accuracy minus the peer's.",
        "",
        "| affedge | peer | threads | x items/s | x p50 latency | x cold start | x peak RSS "
        "| quality delta |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["ratios"]:
        lines.append(
            f"| {r['system']} | {r['peer']} | {r['threads']} | {_g(r['speedup'])} | "
            f"{_g(r['latency_x'])} | {_g(r['cold_start_x'])} | {_g(r['rss_x'])} | "
            f"{_fmt(r['quality_delta'], 4)} |"
        )
    lines += [
        "",
        "## Measurements",
        "",
        "| system | threads | cold start s | p50 ms | p95 ms | items/s | tokens/s | peak RSS MB "
        "| accuracy | ECE | agreement | GFLOP/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['threads']} | failed: {r['error']} |")
            continue
        frac = r.get("peak_fraction")
        lines.append(
            f"| {r['system']} | {r['threads']} | {_fmt(r['cold_start_s'])} | "
            f"{_fmt(r['latency_p50_ms'], 1)} | {_fmt(r['latency_p95_ms'], 1)} | "
            f"{_fmt(r['items_per_s'], 1)} | {_fmt(r['tokens_per_s'], 0)} | "
            f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r.get('accuracy'), 4)} | "
            f"{_fmt(r.get('ece'), 4)} | {_fmt(r.get('agreement_with_affedge'), 4)} | "
            f"{_fmt(r.get('gflops'))} | {'' if frac is None else f'{frac:.1%}'} |"
        )
    lines += ["", "## Roofline", ""]
    for t, s in report["sgemm"].items():
        if "gflops" in s:
            lines.append(
                f"- {t} threads: numpy float32 matmul ({s['n']}x{s['n']}) "
                f"{s['gflops']:.1f} GFLOP/s (median of {len(s['gflops_runs'])})."
            )
    lines += [
        "- Achieved GFLOP/s = 2 x forward parameters x tokens/s. Forward parameters leave out "
        "embedding tables (a lookup) and a decoder's output projection (computed for the last "
        "position only); encoders count the layers' matmul weights, L x (4 d^2 + 2 d ff). "
        "Attention-score FLOPs and padding are not counted, so fractions are lower bounds. "
        "int8 and 4-bit kernels are not bound by the float32 peak: their fraction can be "
        "read as 'share of an fp32 machine's matmul limit'.",
        "- Tokens: encoders, the real tokens of each item; affedge decoders, the item's tokens "
        "after the cached instruction head; transformers decoders, the whole prompt; "
        "generation, the item's tokens plus the generated ones.",
        "- ECE: 15 equal-width bins of the top label's probability; empty where a system gives "
        "hard labels only (lexicons, generation). agreement: share of items labelled as "
        "affedge's engine of the same model labels them.",
        "- Cold start: from spawning a fresh Python process to the first item's labels "
        "(imports, model load, one item; reading the inputs excluded). Peak RSS: that process's "
        "maximum resident set.",
    ]
    return "\n".join(lines) + "\n"


def plot_quality_speed(
    points: Sequence[dict[str, Any]], path: Path, title: str, ylabel: str = "accuracy"
) -> Path:
    """Scatter of quality against items/s (log x), one labelled point per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    groups = sorted({p.get("group", "") for p in points})
    markers = dict(zip(groups, "osD^vP*X", strict=False))
    for p in points:
        if p.get("quality") is None or not p.get("items_per_s"):
            continue
        ax.scatter(
            p["items_per_s"], p["quality"], marker=markers.get(p.get("group", ""), "o"), s=50
        )
        ax.annotate(
            p["label"], (p["items_per_s"], p["quality"]), fontsize=7,
            xytext=(4, 4), textcoords="offset points",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("items/s (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def bench_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Plot points of a bench report: every system at the largest thread count."""
    top = max(report["threads"])
    return [
        {
            "label": r["system"],
            "items_per_s": r["items_per_s"],
            "quality": r.get("accuracy"),
            "group": r["system"].partition(":")[0],
        }
        for r in report["results"]
        if "error" not in r and r["threads"] == top
    ]
