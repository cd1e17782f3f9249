"""bench/gpu_lease.py: what a GPU lease brings back, and that its plan fits the device's limits.

The device side as a whole (receive, setup, start, collect with --smoke) was rehearsed by hand
on the CPU (README, Training decoder LLMs); these tests hold the parts that decide what comes
back and whether the tree fits a call.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from affedge.bench import gpu_lease


def _fake_lease(root: Path) -> Path:
    lease = root / "lease"
    stage = lease / "runs" / "progressive" / "stages" / "sa"
    stage.mkdir(parents=True)
    (lease / "runs" / "progressive" / "affedge.json").write_text('{"kind": "affedge-llm"}')
    (stage / "adapter.safetensors").write_bytes(b"A" * 1000)
    (stage / "adapter_config.json").write_text("{}")
    (stage / "done.json").write_text("{}")
    (stage / "checkpoint").mkdir()
    (stage / "checkpoint" / "state.json").write_text("{}")  # resumable state stays there
    (lease / "runs" / "progressive" / "model.safetensors").write_bytes(b"W" * 1000)
    (lease / "logs").mkdir()
    (lease / "logs" / "progressive.log").write_text("step 1\nstep 2\n")
    (lease / "logs" / "progressive.rc").write_text("0\n")
    (lease / "results").mkdir()
    (lease / "results" / "train_speed_gpu.json").write_text("{}")
    return lease


def test_collect_brings_back_manifests_adapters_and_logs_not_weights(tmp_path):
    lease = _fake_lease(tmp_path)
    out = tmp_path / "OUT"
    gpu_lease.collect(lease, out)
    status = (out / "status.txt").read_text()
    assert "## progressive: exit 0" in status and "step 2" in status
    assert "## multitask: running or not started" in status
    parts = sorted(p.name for p in out.glob("results.tgz.*"))
    assert parts == ["results.tgz.00"]
    here = tmp_path / "here"
    gpu_lease.unpack(out, here)
    got = sorted(str(p.relative_to(here)) for p in here.rglob("*") if p.is_file())
    assert got == [
        "logs/progressive.log",
        "logs/progressive.rc",
        "results/train_speed_gpu.json",
        "runs/progressive/affedge.json",
        "runs/progressive/stages/sa/adapter.safetensors",
        "runs/progressive/stages/sa/adapter_config.json",
        "runs/progressive/stages/sa/done.json",
    ]


def test_collect_splits_what_comes_back_into_files_the_device_returns(tmp_path, monkeypatch):
    lease = _fake_lease(tmp_path)
    blob = lease / "runs" / "progressive" / "stages" / "sa" / "adapter.safetensors"
    blob.write_bytes(random.Random(0).randbytes(2**20))  # 1 MiB that gzip cannot shrink
    monkeypatch.setattr(gpu_lease, "BACK_FILE_BYTES", 300_000)
    out = tmp_path / "OUT"
    gpu_lease.collect(lease, out)
    parts = sorted(out.glob("results.tgz.*"))
    assert len(parts) > 1 and all(p.stat().st_size <= 300_000 for p in parts)
    gpu_lease.unpack(out, tmp_path / "here")
    back = tmp_path / "here" / blob.relative_to(lease)
    assert back.read_bytes() == blob.read_bytes()


def test_every_job_has_a_gpu_and_a_smoke_command_and_the_slim_tree_leaves_room():
    jobs = [job for group in gpu_lease.JOBS for job in group]
    assert set(jobs) == set(gpu_lease.COMMANDS) == set(gpu_lease.SMOKE)
    assert all("--require-gpu" in gpu_lease.COMMANDS[j] for j in ("progressive", "multitask"))
    assert "--device cuda" in gpu_lease.COMMANDS["speed"]
    # The slimmed tree leaves most of a call for the kit (the full tree would leave ~2 MiB).
    assert gpu_lease.travelling_bytes() < 16 * 2**20
    assert gpu_lease.travelling_bytes(slimmed=False) > gpu_lease.travelling_bytes()


def test_unpack_refuses_a_folder_without_parts(tmp_path):
    with pytest.raises(SystemExit, match=r"no results\.tgz\.NN parts"):
        gpu_lease.unpack(tmp_path, tmp_path / "into")


def test_setup_refuses_a_kit_whose_parts_do_not_join_to_the_planned_bytes(tmp_path):
    lease = tmp_path / "lease"
    (lease / "parts").mkdir(parents=True)
    (lease / "parts" / "001").write_bytes(b"part one")
    plan = {"kit_sha256": "0" * 64, "parts": [{"call": 1, "bytes": 8}]}
    (lease / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(SystemExit, match="sha256 differs"):
        gpu_lease.setup(lease)
    assert not (lease / "kit.tar").exists()  # nothing half-joined is left to unpack
    plan["parts"].append({"call": 2, "bytes": 8})
    (lease / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(SystemExit, match="have 1 of 2 kit parts"):
        gpu_lease.setup(lease)
