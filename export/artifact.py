"""What every decoder export shares: the source model, staged artifact folders, manifests.

An artifact is a folder (``OUT/<quant>/``) holding the model file, what the runtime needs
beside it, and ``affedge.json`` with the verification report. It is built in
``OUT/.<quant>.partial`` and renamed into place only after it passed verification, so an
interrupted or failed export (a full disk, Ctrl-C, agreement below the floor) leaves no
artifact behind, and a runtime pointed at ``OUT/<quant>`` never sees half a model.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affedge.artifact import ArtifactKind, Manifest, has_manifest
from affedge.errors import ModelError
from affedge.export.verify import VerifyReport
from affedge.train.hf_base import hf_folder


@dataclass
class Source:
    """The model being exported: its HF folder and, for affedge-trained models, the manifest."""

    path: Path  # what the user named (folder or GGUF file)
    folder: Path  # HF folder (a GGUF source is converted once and cached)
    manifest: Manifest | None  # affedge-trained models; None for a plain HF folder or GGUF

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.tasks) if self.manifest else []

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


def open_source(path: Path) -> Source:
    """Resolve and check the model to export (ModelError for anything unusable)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"{path}: no such model folder or file")
    folder = hf_folder(path)
    manifest = Manifest.read(folder) if has_manifest(folder) else None
    return Source(path=path, folder=folder, manifest=manifest)


def load_source_model(source: Source, threads: int | None = None) -> Any:
    """The source as a float32 transformers model (the reference exports are checked on).

    torch gets ``threads`` like the engines do: its OpenMP pool spin-waits, and more threads
    than free cores made a SmolLM2 forward pass 11x slower on a busy 2-core machine.
    """
    import torch

    from affedge.train.hf_base import load_causal_lm

    if threads:
        torch.set_num_threads(threads)
    model, _ = load_causal_lm(source.folder)
    return model


def special_tokens(folder: Path) -> dict[str, Any]:
    """BOS/EOS strings and ids, the end-of-turn id and whether BOS is prepended, from the
    HF tokenizer (the same facts the GGUF writer copies into GGUF metadata)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    eos_id = config.get("eos_token_id", tok.eos_token_id)
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    if eos_id is None:
        raise ModelError(f"{folder}: the tokenizer has no end-of-sequence token")
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = (
        json.loads(tok_config_path.read_text(encoding="utf-8")) if tok_config_path.is_file() else {}
    )
    return {
        "bos": tok.bos_token or "",
        "bos_id": tok.bos_token_id if tok.bos_token_id is not None else -1,
        "eos": tok.convert_ids_to_tokens(int(eos_id)),
        "eot_id": int(eos_id),
        "add_bos": bool(tok_config.get("add_bos_token", False)),
        "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
    }


@contextmanager
def output_dir(out: Path) -> Iterator[Path]:
    """Create ``out`` and yield a scratch folder inside it for intermediate files.

    The scratch folder always goes; ``out`` goes too if this export created it and no
    artifact made it in. A full disk or unwritable folder becomes one ModelError line.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=out))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        where = exc.filename or out
        raise ModelError(f"{where}: cannot write the export ({exc.strerror or exc})") from None
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def check_floor(report: VerifyReport) -> None:
    if report.agreement < report.floor:
        raise ModelError(
            f"{report.artifact}: label agreement with the source is {report.agreement:.1%} on "
            f"{report.n} {report.dataset} {report.split} items, below the "
            f"{report.floor:.0%} floor; artifact not written"
        )


def write_manifest(
    folder: Path,
    kind: ArtifactKind,
    source: Source,
    quant: str,
    report: VerifyReport,
    file: str,
    runtime: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The artifact's manifest: runtime fields, where it came from and its verification.

    ``runtime`` adds runtime fields or replaces the ones taken from the source (``base``,
    ``tasks``, ``labels``)."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    origin = source.manifest
    fields: dict[str, Any] = {
        "base": origin.base if origin else None,
        "tasks": source.tasks,
        "labels": dict(origin.labels) if origin else {},
        **(runtime or {}),
    }
    manifest = Manifest(
        kind=kind.value,
        file=file,
        quant=quant,
        **fields,
        info={
            "source": {
                "path": str(source.path),
                "hf_folder": str(source.folder),
                "kind": origin.kind if origin else ArtifactKind.HF_CAUSAL_LM.value,
                "base": origin.base if origin else None,
            },
            "verification": report.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": f"{platform.machine()} {platform.system()}",
            "versions": {
                p: version(p)
                for p in ("affedge", "transformers", "gguf", "llama-cpp-python", "onnxruntime")
            },
            **extra,
        },
    )
    manifest.write(folder)
    return manifest.to_dict()
