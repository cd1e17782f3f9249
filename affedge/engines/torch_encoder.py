"""Trained multi-task encoders straight from their torch folder (train extra; fp32 CPU).

The same head logic as every encoder backend (engines/encoder.py); used to run a model before
export and as the transformers peer of the ONNX encoder in bench (same weights, fp32).
torch is imported only when a model of this kind is opened, never on the runtime path.
"""

from __future__ import annotations

import numpy as np

from affedge.engines.encoder import EncoderEngine
from affedge.models import ModelRef


class TorchEncoderEngine(EncoderEngine):
    """A folder written by `affedge train encoder` (``model.safetensors`` + manifest)."""

    def __init__(self, ref: ModelRef, threads: int | None = None, batch_size: int = 32) -> None:
        import torch

        from affedge.train.encoder_model import load_model

        super().__init__(ref, batch_size)
        if threads:
            torch.set_num_threads(threads)
        self.path = ref.folder
        self._torch = torch
        self._model, _ = load_model(ref.folder, device="cpu")

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            outs = self._model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        return {name: out.float().numpy() for name, out in zip(self.heads, outs, strict=True)}
