"""The one onnxruntime session helper (encoder and decoder backends, export checks, bench)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from affedge.errors import ModelError


def cpu_session(model_file: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: all cores);
    ModelError if the file cannot be loaded."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelError(f"{model_file}: onnxruntime cannot load it ({exc})") from None
