"""One line, never a traceback: Ctrl-C during imports, and encoders whose manifest lies."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from affedge.models import BUILTIN

REPO = Path(__file__).resolve().parents[1]

#: Runs the real CLI with a SIGINT sent to itself as soon as Python looks for the first
#: submodule of onnxruntime: the signal lands in the middle of ``import onnxruntime``.
SIGINT_IN_ORT_IMPORT = """
import os, signal, sys

class SigintInOnnxruntimeImport:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("onnxruntime."):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, SigintInOnnxruntimeImport())
sys.argv = ["affedge", *sys.argv[1:]]
from affedge.cli import main
main()
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a foreground run gets it


def test_ctrl_c_while_onnxruntime_imports_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("What a wonderful film.\nNever again.\n", encoding="utf-8")
    run = ["classify", str(src), "-m", "minilm-affect-int8", "-o", str(tmp_path / "out.jsonl")]
    proc = subprocess.run(
        [sys.executable, "-c", SIGINT_IN_ORT_IMPORT, *run],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=_default_sigint,
        timeout=600,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines() == ["affedge: interrupted"]
    assert not (tmp_path / "out.jsonl").exists()


@pytest.fixture
def encoder_folder(tmp_path: Path) -> Path:
    """A copy of the shipped int8 encoder artifact, to edit."""
    shipped = next(m for m in BUILTIN if m.name == "minilm-affect-int8").locate()
    assert shipped is not None
    return Path(shutil.copytree(shipped, tmp_path / "encoder"))


def _edit_heads(folder: Path, edit: dict[str, object]) -> None:
    manifest = json.loads((folder / "affedge.json").read_text(encoding="utf-8"))
    manifest["heads"].update(edit)
    (folder / "affedge.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "task", "message"),
    [
        ({"mood": {"kind": "classify", "labels": ["calm", "tense"]}}, "emotion", "not outputs"),
        (
            {"sentiment": {"kind": "classify", "labels": ["negative", "positive"]}},
            "all",
            "has 2 labels in the manifest but the ONNX model's 'sentiment' output has 3",
        ),
    ],
    ids=["head-not-an-output", "label-count-differs"],
)
def test_manifest_heads_that_the_model_lacks_are_one_line(
    cli, encoder_folder: Path, tmp_path: Path, edit: dict[str, object], task: str, message: str
) -> None:
    _edit_heads(encoder_folder, edit)
    src = tmp_path / "in.txt"
    src.write_text("Great film.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("classify", src, "-m", encoder_folder, "--task", task, "-o", out)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("affedge: error: ") and message in line
    assert not out.exists()
