"""What every recorded benchmark run carries: the machine, the command, the files."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(*packages: str) -> dict[str, object]:
    """CPU, core count, OS, Python and the versions of ``packages``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores_usable": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in ("affedge", *packages)},
    }


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    """Record a run as ``out.json`` and ``out.md`` (bench/results/ by default) and print it."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)


def stamp(name: str, argv: list[str] | None, *packages: str) -> dict[str, Any]:
    """The fields every recorded run starts with: what ran, when, how, and where."""
    import shlex
    from datetime import datetime, timezone

    return {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python -m affedge.bench.{name} " + shlex.join(argv or sys.argv[1:]),
        "machine": machine_info(*packages),
    }


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write and close a matplotlib figure (the folder is created)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
