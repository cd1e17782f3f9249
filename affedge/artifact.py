"""The artifact contract: what a model folder affedge writes or runs looks like on disk.

Every writer (train/, export/) and every reader (the runtime's model resolution, bench) goes
through this module; nothing else names ``affedge.json`` or parses it. A folder holds the model
file(s) and ``affedge.json``, the manifest: its :class:`ArtifactKind`, the fields the runtime
needs (``file``, ``heads``, ``max_length`` ...; typed and validated here) and the provenance
record (training data and hashes, hyper-parameters, verification reports ...) kept verbatim in
:attr:`Manifest.info`.

Manifests come from elsewhere and are untrusted: reading one validates every runtime field
and its size, refuses file names that leave the folder, and ends in one :class:`ModelError`
line naming the manifest and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from affedge.atomic import atomic_write_text
from affedge.errors import ModelError

MANIFEST_NAME = "affedge.json"
#: The largest manifest read (training histories are long, but never this long).
MAX_MANIFEST_BYTES = 16 * 2**20
GGUF_MAGIC = b"GGUF"


class ArtifactKind(str, Enum):
    """What a model folder (or file) is; the backend registry opens a model by its kind."""

    #: A multi-task encoder trained by ``affedge train encoder`` (torch, safetensors).
    ENCODER_TORCH = "affedge-encoder-multitask"
    #: That encoder exported to ONNX with its heads (``affedge export onnx``).
    ENCODER_ONNX = "affedge-encoder-onnx"
    #: A static-embedding encoder (``affedge train static``): numpy + tokenizers at run time.
    ENCODER_STATIC = "affedge-encoder-static"
    #: A decoder LLM trained by ``affedge train progressive|multitask`` (merged HF folder).
    LLM_HF = "affedge-llm"
    #: A decoder exported to GGUF by ``affedge export gguf``, or any GGUF file.
    LLM_GGUF = "affedge-llm-gguf"
    #: A llama.cpp LoRA adapter GGUF (``affedge export gguf-lora``) applied at load time on the
    #: GGUF model named by the manifest's ``base`` (a built-in name, or a path; a relative path
    #: is relative to the artifact folder).
    LLM_GGUF_LORA = "affedge-llm-gguf-lora"
    #: A decoder exported to ONNX (one forward pass, no KV cache).
    LLM_ONNX = "affedge-llm-onnx"
    #: A plain Hugging Face causal-LM folder (a base model; no manifest).
    HF_CAUSAL_LM = "hf-causal-lm"


#: Head kinds of multi-task encoders.
HEAD_KINDS = ("classify", "regress")


@dataclass(frozen=True)
class HeadSpec:
    """One output head of a multi-task encoder: its kind and its labels (columns)."""

    kind: str
    labels: tuple[str, ...]


@dataclass
class Manifest:
    """A typed ``affedge.json``.

    Runtime fields are typed and validated; ``info`` holds the rest of the record (provenance,
    reports) and is written back as top-level keys, so a read/write round trip keeps it.
    """

    kind: str
    #: The model file inside the folder (``model.int8.onnx``, ``model.gguf`` ...).
    file: str | None = None
    base: str | None = None
    #: Encoders: head name -> kind and labels, in output order.
    heads: dict[str, HeadSpec] = field(default_factory=dict)
    #: Decoders: the tasks it was trained or verified on, and their label sets.
    tasks: list[str] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)
    max_length: int | None = None
    context_turns: int | None = None
    pooling: str | None = None
    #: Decoders on onnxruntime: chat template, special tokens, context window.
    chat_template: str | None = None
    special_tokens: dict[str, Any] | None = None
    n_ctx: int | None = None
    #: Exports: the quantization type of this artifact.
    quant: str | None = None
    #: Temperature scaling fitted on validation data (:mod:`affedge.calibration`): calibration
    #: key (task, or task:label,label,... for a label subset) -> temperature.
    calibration: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def artifact_kind(self) -> ArtifactKind | None:
        """The built-in kind, or None for a kind a plugin backend registered."""
        try:
            return ArtifactKind(self.kind)
        except ValueError:
            return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name in ("kind", "info"):
                continue
            value = getattr(self, f.name)
            if value is None or value == {} or value == []:
                continue
            if f.name == "heads":
                value = {n: {"kind": h.kind, "labels": list(h.labels)} for n, h in value.items()}
            out[f.name] = value
        clash = set(out) & set(self.info)
        if clash:
            raise ValueError(f"manifest info repeats runtime fields: {sorted(clash)}")
        return _to_disk({**out, **self.info})

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Manifest:
        """Validate ``data`` (parsed JSON); ModelError naming ``where`` and the field."""
        if not isinstance(data, dict):
            raise ModelError(f"{where}: the manifest is not a JSON object")
        data = _from_disk(dict(data))
        check = _Checker(where)
        kind = check.string(data, "kind", required=True)
        assert kind is not None
        heads: dict[str, HeadSpec] = {}
        raw_heads = data.get("heads", {})
        if not isinstance(raw_heads, dict):
            raise ModelError(f"{where}: field 'heads' must be an object")
        for name, spec in raw_heads.items():
            if not isinstance(spec, dict) or spec.get("kind") not in HEAD_KINDS:
                raise ModelError(f"{where}: head {name!r} needs a kind in {HEAD_KINDS}")
            heads[name] = HeadSpec(spec["kind"], tuple(check.strings(spec, "labels", name)))
        raw_labels = data.get("labels", {})
        if not isinstance(raw_labels, dict):
            raise ModelError(f"{where}: field 'labels' must be an object")
        labels = {str(t): check.strings(raw_labels, t, "labels") for t in raw_labels}
        special = data.get("special_tokens")
        if special is not None and not isinstance(special, dict):
            raise ModelError(f"{where}: field 'special_tokens' must be an object")
        known = {f.name for f in fields(cls)} - {"info"}
        return cls(
            kind=kind,
            file=check.file_name(data, "file"),
            base=check.string(data, "base"),
            heads=heads,
            tasks=check.strings(data, "tasks") if "tasks" in data else [],
            labels=labels,
            max_length=check.integer(data, "max_length", 1, 1 << 20),
            context_turns=check.integer(data, "context_turns", 0, 1024),
            pooling=check.string(data, "pooling"),
            chat_template=check.string(data, "chat_template"),
            special_tokens=special,
            n_ctx=check.integer(data, "n_ctx", 1, 1 << 24),
            quant=check.string(data, "quant"),
            calibration=_temperatures(data.get("calibration", {}), where),
            info={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of an artifact folder; ModelError (one line) if missing or invalid."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ModelError(f"{folder}: no {MANIFEST_NAME}: not an affedge model folder")
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise ModelError(f"{path}: manifest of {size:,} bytes is larger than allowed")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # bad UTF-8 or JSON, a 5000-digit number
            raise ModelError(f"{path}: unreadable manifest ({exc})") from None
        except RecursionError:  # [[[[...]]]]
            raise ModelError(f"{path}: unreadable manifest (nested too deeply)") from None
        return cls.from_dict(data, str(path))

    def write(self, folder: Path) -> Path:
        """Write ``folder/affedge.json`` atomically; returns its path."""
        path = Path(folder) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def model_file(self, folder: Path) -> Path:
        """The model file the manifest names, which must exist inside ``folder``."""
        if not self.file:
            raise ModelError(f"{folder / MANIFEST_NAME}: names no model file")
        path = Path(folder) / self.file
        if not path.is_file():
            raise ModelError(f"{folder}: the manifest names {self.file}, which is missing")
        if not path.resolve().is_relative_to(Path(folder).resolve()):  # a symbolic link
            raise ModelError(f"{folder}: the manifest's {self.file} leads outside the folder")
        return path


def _temperatures(raw: Any, where: str) -> dict[str, float]:
    """The ``calibration`` field: key -> a finite temperature in [0.01, 100]."""
    if not isinstance(raw, dict):
        raise ModelError(f"{where}: field 'calibration' must be an object")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelError(f"{where}: calibration[{key!r}] must be a number")
        if not 0.01 <= float(value) <= 100.0:  # also refuses NaN
            raise ModelError(f"{where}: calibration[{key!r}] = {value} is outside [0.01, 100]")
        out[str(key)] = float(value)
    return out


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def read_manifest(folder: Path) -> Manifest:
    """Shorthand for :meth:`Manifest.read`."""
    return Manifest.read(folder)


def is_gguf_file(path: Path) -> bool:
    """True if ``path`` starts with the GGUF magic bytes."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


#: The exported encoder's on-disk form predates this contract: the training kind plus an
#: ``onnx`` section naming the file. It is kept (in both directions) so that artifacts written
#: by any affedge version stay readable by every other one, the shipped model included.
_ENCODER_ONNX_DISK_KIND = ArtifactKind.ENCODER_TORCH.value


def _to_disk(data: dict[str, Any]) -> dict[str, Any]:
    if data["kind"] != ArtifactKind.ENCODER_ONNX.value:
        return data
    onnx = {"file": data.pop("file", None), **data.get("onnx", {})}
    data = {"kind": _ENCODER_ONNX_DISK_KIND, **{k: v for k, v in data.items() if k != "kind"}}
    data["onnx"] = onnx
    return data


def _from_disk(data: dict[str, Any]) -> dict[str, Any]:
    onnx = data.get("onnx")
    if data.get("kind") == _ENCODER_ONNX_DISK_KIND and isinstance(onnx, dict):
        data["kind"] = ArtifactKind.ENCODER_ONNX.value
        data.setdefault("file", onnx.get("file"))
        data["onnx"] = {k: v for k, v in onnx.items() if k != "file"}
        if not data["onnx"]:
            del data["onnx"]
    return data


class _Checker:
    """Field validators that fail with one line naming the manifest and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def _fail(self, key: str, what: str) -> ModelError:
        return ModelError(f"{self.where}: field {key!r} {what}")

    def string(self, data: dict[str, Any], key: str, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise self._fail(key, "is missing")
            return None
        if not isinstance(value, str) or (required and not value):
            raise self._fail(key, "must be a non-empty string")
        return value

    def strings(self, data: dict[str, Any], key: str, owner: str = "") -> list[str]:
        value = data.get(key)
        name = f"{owner}.{key}" if owner else key
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "must be a list of strings")
        if len(value) > 100_000:
            raise self._fail(name, "is too long")
        return list(value)

    def integer(self, data: dict[str, Any], key: str, low: int, high: int) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._fail(key, f"must be an integer in [{low}, {high}]")
        return value

    def file_name(self, data: dict[str, Any], key: str) -> str | None:
        """A plain file name inside the artifact folder: no folders, no way out of it."""
        value = self.string(data, key)
        if value is None:
            return None
        pure = PurePosixPath(value)
        if pure.is_absolute() or "\\" in value or len(pure.parts) != 1 or value in (".", ".."):
            raise self._fail(key, f"must name a file inside the model folder, not {value!r}")
        return value
