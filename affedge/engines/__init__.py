"""The backend registry: a model's kind names the engine class that opens it.

Each backend is one file in this package and registers here the artifact kinds it opens; its
class declares its capabilities (:class:`~affedge.engines.base.Capability`). Backends are
imported only when a model of their kind is opened, so the runtime pays only for the one it
uses (onnxruntime, llama.cpp ...). Third-party packages add backends through the
``affedge.backends`` entry-point group (a :class:`Backend` object), or at run time with
:func:`register_backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from affedge.artifact import ArtifactKind
from affedge.device import DEFAULT_DEVICE, check_device
from affedge.engines.base import Capability, Engine, LabelResult, ScoreResult
from affedge.errors import ModelError
from affedge.models import ModelRef, resolve_model

ENTRY_POINT_GROUP = "affedge.backends"


@dataclass(frozen=True)
class Backend:
    """An engine class (or ``"module:Class"``, imported on first use) and the kinds it opens.

    The class is constructed as ``cls(ref: ModelRef, threads: int | None)``.
    """

    name: str
    kinds: tuple[str, ...]
    engine: str | type[Engine]
    extra: str | None = None  # the pip extra that provides its dependencies, for the error
    requires: tuple[str, ...] = ()  # modules it imports (checked before it is used)
    #: Devices besides the CPU it can run on (its class then takes ``device=``), and whether
    #: it takes ``gpu_layers=`` (llama.cpp offload); see affedge/device.py.
    devices: tuple[str, ...] = ("cpu",)
    gpu_layers: bool = False

    def load(self) -> type[Engine]:
        """The engine class; ModelError naming the pip extra if a dependency is missing."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            hint = f": pip install 'affedge[{self.extra}]'" if self.extra else ""
            raise ModelError(f"the {self.name} backend needs {', '.join(missing)}{hint}")
        if not isinstance(self.engine, str):
            return self.engine
        module, _, attr = self.engine.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            hint = f": pip install 'affedge[{self.extra}]'" if self.extra else ""
            raise ModelError(f"the {self.name} backend cannot load ({exc}){hint}") from None


_BACKENDS: dict[str, Backend] = {}
_entry_points_loaded = False


def register_backend(backend: Backend, replace: bool = False) -> None:
    """Make ``backend`` open models of its kinds (``replace`` to take over a kind)."""
    for kind in backend.kinds:
        if kind in _BACKENDS and not replace and _BACKENDS[kind] != backend:
            raise ValueError(f"kind {kind!r} already has a backend ({_BACKENDS[kind].name})")
    for kind in backend.kinds:
        _BACKENDS[kind] = backend


def unregister_backend(name: str) -> None:
    for kind in [k for k, b in _BACKENDS.items() if b.name == name]:
        del _BACKENDS[kind]


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        backend: Any = ep.load()
        if isinstance(backend, Backend):
            register_backend(backend)


def backend_for(kind: str) -> Backend:
    """The backend registered for ``kind``; ModelError listing what can be opened."""
    if kind not in _BACKENDS:
        _load_entry_points()
    if kind not in _BACKENDS:
        known = ", ".join(sorted(_BACKENDS))
        raise ModelError(f"no backend opens {kind!r} models (this install opens: {known})")
    return _BACKENDS[kind]


def backends() -> list[Backend]:
    """Every registered backend, each once."""
    _load_entry_points()
    return list(dict.fromkeys(_BACKENDS.values()))


def open_engine(
    model: str | ModelRef | None = None,
    threads: int | None = None,
    device: str = DEFAULT_DEVICE,
    gpu_layers: int | None = None,
) -> Engine:
    """Load ``model`` (a built-in name, a path, a resolved ref or None for the default) on
    ``device`` (``auto``, ``cpu``, ``cuda``; affedge/device.py) with ``gpu_layers`` llama.cpp
    layers offloaded (GGUF models; default: all of them on a GPU)."""
    device = check_device(device, gpu_layers)
    ref = resolve_model(model)
    backend = backend_for(ref.kind)
    if gpu_layers is not None and not backend.gpu_layers:
        raise ModelError(f"--gpu-layers: {ref.name} runs on {backend.name}, not llama.cpp")
    placement: dict[str, Any] = {}
    if "cuda" in backend.devices:
        placement["device"] = device
    elif device == "cuda":
        raise ModelError(f"--device cuda: {ref.name} runs on {backend.name}, CPU only")
    if backend.gpu_layers:
        placement["gpu_layers"] = gpu_layers
    return backend.load()(ref, threads=threads, **placement)


register_backend(
    Backend(
        "onnx-encoder",
        (ArtifactKind.ENCODER_ONNX.value,),
        "affedge.engines.onnx:ONNXEncoderEngine",
        devices=("cpu", "cuda"),
    )
)
register_backend(
    Backend(
        "static", (ArtifactKind.ENCODER_STATIC.value,), "affedge.engines.static:StaticEncoderEngine"
    )
)
register_backend(
    Backend(
        "torch-encoder",
        (ArtifactKind.ENCODER_TORCH.value,),
        "affedge.engines.torch_encoder:TorchEncoderEngine",
        extra="train",
        requires=("torch", "transformers"),
    )
)
register_backend(
    Backend(
        "llama.cpp",
        (ArtifactKind.LLM_GGUF.value, ArtifactKind.LLM_GGUF_LORA.value),
        "affedge.engines.gguf:GGUFEngine",
        extra="llm",
        requires=("llama_cpp",),
        devices=("cpu", "cuda"),
        gpu_layers=True,
    )
)
register_backend(
    Backend(
        "onnx-decoder",
        (ArtifactKind.LLM_ONNX.value,),
        "affedge.engines.onnx_decoder:ONNXDecoderEngine",
        devices=("cpu", "cuda"),
    )
)

__all__ = [
    "Backend",
    "Capability",
    "Engine",
    "LabelResult",
    "ScoreResult",
    "backend_for",
    "backends",
    "open_engine",
    "register_backend",
]
