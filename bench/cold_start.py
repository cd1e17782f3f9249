"""Cold start of `affedge classify` on a 10-line file: wall and CPU time of fresh processes.

Each run is ``python -m affedge.cli classify ten.txt -q`` in a new process (interpreter,
imports, model load, ten items, output). With ``--ref GITREF`` the same command of that
commit (``git archive`` into a temporary folder, first on ``PYTHONPATH``) runs interleaved
with the working tree's (``--ref A --ref B --no-working-tree``: two commits), so all see the
same machine load; the medians and the ratio come from one session. Two bytecode modes:
``pyc`` (a bytecode cache in a temporary ``PYTHONPYCACHEPREFIX``, warmed once: what an
installed package sees) and ``source``
(``PYTHONDONTWRITEBYTECODE=1`` and no cache: affedge compiled from source every run, as an
editable checkout with that variable set sees). CPU time is user + system of the children.

    python -m affedge.bench.cold_start --runs 15 --ref HEAD
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affedge.bench.reporting import stamp, write_report

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
LINES = (
    "What a wonderful, moving film. I cried twice.",
    "The service was slow and the food arrived cold.",
    "The package arrived on Tuesday.",
    "I can't believe how good this update is!",
    "Honestly the worst customer support I have ever dealt with.",
    "It's fine, nothing special.",
    "Absolutely terrible, I want a refund.",
    "Not bad at all.",
    "I guess it works.",
    "Best purchase I made this year.",
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    cpu = _children_cpu()
    start = time.perf_counter()
    # run outside the checkout: `python -m` puts the working folder first on sys.path
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - start, _children_cpu() - cpu


def _environments(tree: Path | None, cache: Path) -> dict[str, dict[str, str]]:
    base = dict(os.environ)
    if tree is not None:
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), base.get("PYTHONPATH")]))
    pyc = {k: v for k, v in base.items() if k != "PYTHONDONTWRITEBYTECODE"}
    pyc["PYTHONPYCACHEPREFIX"] = str(cache)
    source = {k: v for k, v in base.items() if k != "PYTHONPYCACHEPREFIX"}
    source["PYTHONDONTWRITEBYTECODE"] = "1"
    return {"pyc": pyc, "source": source}


def measure(
    runs: int, refs: Sequence[str], model: str | None, working_tree: bool = True
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = folder / "ten.txt"
        src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "affedge.cli", "classify", str(src), "-q"]
        if model:
            command += ["-m", model]
        systems: dict[str, Path | None] = {}
        for i, ref in enumerate(refs):
            tree = folder / f"ref{i}"
            tree.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", ref, "affedge"], check=True, capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
            commit = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            systems[f"{ref} ({commit})"] = tree
        if working_tree:
            systems["working tree"] = None
        envs = {
            name: _environments(tree, folder / "pyc" / str(i))
            for i, (name, tree) in enumerate(systems.items())
        }
        for name, modes in envs.items():  # each system runs its own code
            where = subprocess.run(
                [sys.executable, "-c", "import affedge; print(affedge.__file__)"],
                env=modes["pyc"],
                cwd=folder,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            tree = systems[name]
            assert Path(where).is_relative_to(tree or ROOT), (name, where)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for modes in envs.values():
            _once(command, modes["pyc"], folder)  # warm the bytecode cache and the page cache
        for _ in range(runs):  # interleaved: every system sees the same load
            for name, modes in envs.items():
                for mode, env in modes.items():
                    times.setdefault((name, mode), []).append(_once(command, env, folder))
    rows = []
    for (name, mode), samples in times.items():
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        rows.append({
            "system": name, "bytecode": mode, "runs": len(samples),
            "median_wall_s": round(statistics.median(walls), 3),
            "min_wall_s": round(min(walls), 3),
            "median_cpu_s": round(statistics.median(cpus), 3),
        })  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--ref", action="append", default=[], help="a commit to compare (repeatable)"
    )
    parser.add_argument("--no-working-tree", action="store_true", help="only the --ref commits")
    parser.add_argument("--model", help="default: the built-in default")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_start")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = measure(args.runs, args.ref, args.model, working_tree=not args.no_working_tree)
    report: dict[str, Any] = {
        **stamp("cold_start", argv, "onnxruntime", "tokenizers", "typer"),
        "model": args.model or "default",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    lines = [
        "# Cold start: `affedge classify` on a 10-line file",
        "",
        f"`{report['command']}` on {report['machine']['cpu']} "
        f"({report['machine']['cores_usable']} cores), {report['date']}; load average "
        f"{report['load_average_before']} before, {report['load_average_after']} after.",
        "",
        "| system | bytecode | runs | median wall s | min wall s | median CPU s |",
        "|---|---|---:|---:|---:|---:|",
        *(
            f"| {r['system']} | {r['bytecode']} | {r['runs']} | {r['median_wall_s']} | "
            f"{r['min_wall_s']} | {r['median_cpu_s']} |"
            for r in rows
        ),
        "",
        "- pyc: a warm bytecode cache (an installed package); source: affedge compiled from "
        "source every run (`PYTHONDONTWRITEBYTECODE=1`, an editable checkout).",
        "- Runs are interleaved across systems and modes, so each sees the same machine load.",
    ]
    write_report(args.out, report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
