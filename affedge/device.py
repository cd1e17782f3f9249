"""Where a model runs: ``--device auto|cpu|cuda`` and ``--gpu-layers N`` (issue 14, item 4).

* ``cpu``: the CPU only, whatever is installed.
* ``cuda``: an NVIDIA GPU, or one line and exit status 2 saying why not (no CUDA execution
  provider in onnxruntime, a llama.cpp built without GPU offload, no GPU, a backend that runs
  on the CPU only).
* ``auto`` (the default): the GPU when the installed packages can use one, else the CPU
  without a word. A CPU-only install (the core's onnxruntime, llama-cpp-python's default
  build) therefore runs exactly as before.

ONNX models use onnxruntime's CUDA execution provider (``pip install 'affedge[gpu]'``:
onnxruntime-gpu, which replaces onnxruntime; engines/ort.py); GGUF models offload
``--gpu-layers`` transformer layers to the GPU through llama.cpp (``n_gpu_layers``; default
all of them; llama-cpp-python built with ``CMAKE_ARGS="-DGGML_CUDA=on"``).
"""

from __future__ import annotations

from affedge.errors import ModelError

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
#: ``n_gpu_layers`` for "every layer" (llama.cpp clamps it to the model's layer count).
ALL_LAYERS = -1
GPU_EXTRA_HINT = "pip install 'affedge[gpu]' (onnxruntime-gpu in place of onnxruntime)"
LLAMA_CUDA_HINT = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)


def check_device(device: str, gpu_layers: int | None = None) -> str:
    """``device`` lower-cased if it is one of :data:`DEVICES`; ModelError otherwise, or when
    ``--gpu-layers`` asks for GPU layers on ``--device cpu``."""
    name = device.strip().lower()
    if name not in DEVICES:
        raise ModelError(f"--device {device!r}: one of {', '.join(DEVICES)}")
    if gpu_layers is not None and gpu_layers < ALL_LAYERS:
        raise ModelError(f"--gpu-layers {gpu_layers}: a layer count, or -1 for all of them")
    if name == "cpu" and gpu_layers not in (None, 0):
        raise ModelError(f"--gpu-layers {gpu_layers} offloads to a GPU: not with --device cpu")
    return name


def llama_gpu_layers(device: str, gpu_layers: int | None) -> int:
    """llama.cpp's ``n_gpu_layers`` for ``device``: 0 on the CPU; ``gpu_layers`` (default
    all) where llama.cpp can offload; ModelError for ``cuda`` where it cannot."""
    device = check_device(device, gpu_layers)
    if device == "cpu" or gpu_layers == 0:
        return 0
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        if device == "cuda":
            raise ModelError(
                "--device cuda: this llama-cpp-python cannot offload to a GPU (a CPU build, or "
                f"no GPU found); rebuild it with {LLAMA_CUDA_HINT}"
            )
        return 0
    return ALL_LAYERS if gpu_layers is None else gpu_layers
