"""The one onnxruntime session helper (encoder and decoder backends, export checks, bench).

``device`` (affedge/device.py): ``cpu`` runs on onnxruntime's CPU execution provider;
``cuda`` on its CUDA execution provider (onnxruntime-gpu, the ``gpu`` extra), or a
ModelError saying why it cannot; ``auto`` on CUDA when onnxruntime has it and it starts,
else on the CPU without a word.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from affedge.device import GPU_EXTRA_HINT, check_device
from affedge.errors import ModelError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
#: onnxruntime's own log: errors only (a CUDA provider that cannot start logs warnings).
QUIET_LOG_LEVEL = 3


def providers_for(device: str) -> list[str]:
    """The execution providers to ask onnxruntime for, in order; ModelError for ``cuda``
    when this onnxruntime has no CUDA execution provider."""
    import onnxruntime as ort

    device = check_device(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in ort.get_available_providers():
        if device == "cuda":
            raise ModelError(
                f"--device cuda: onnxruntime {ort.__version__} has no CUDA execution provider "
                f"(it has {', '.join(ort.get_available_providers())}); {GPU_EXTRA_HINT}"
            )
        return [CPU_PROVIDER]
    return [CUDA_PROVIDER, CPU_PROVIDER]


def session(model_file: Path, threads: int | None, device: str = "cpu") -> Any:
    """An onnxruntime session on ``device`` with ``threads`` intra-op CPU threads (default:
    all cores); ModelError if the file cannot be loaded, or ``cuda`` cannot be had."""
    import onnxruntime as ort

    providers = providers_for(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    if CUDA_PROVIDER in providers:
        options.log_severity_level = QUIET_LOG_LEVEL
    try:
        # onnxruntime print()s its provider fallback to stdout, where the records go
        with contextlib.redirect_stdout(io.StringIO()):
            sess = ort.InferenceSession(str(model_file), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"{model_file}: onnxruntime cannot load it ({exc})") from None
    if device.strip().lower() == "cuda" and CUDA_PROVIDER not in sess.get_providers():
        raise ModelError(
            "--device cuda: onnxruntime's CUDA execution provider did not start (no NVIDIA "
            "GPU, or its CUDA/cuDNN libraries are missing)"
        )
    return sess


def cpu_session(model_file: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session (:func:`session` on ``cpu``)."""
    return session(model_file, threads, "cpu")


def session_device(sess: Any) -> str:
    """``cuda`` if ``sess`` runs on onnxruntime's CUDA execution provider, else ``cpu``."""
    return "cuda" if CUDA_PROVIDER in sess.get_providers() else "cpu"
