"""Multi-task encoders on onnxruntime (tokenizers + onnxruntime; no torch)."""

from __future__ import annotations

import numpy as np

from affedge.engines.encoder import EncoderEngine, model_path
from affedge.engines.ort import session, session_device
from affedge.models import ModelRef


class ONNXEncoderEngine(EncoderEngine):
    """An exported multi-task encoder folder (``affedge.json`` + ``*.onnx`` + tokenizer)."""

    def __init__(
        self, ref: ModelRef, threads: int | None = None, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        super().__init__(ref, batch_size)
        self.path = model_path(ref)
        self._session = session(self.path, threads, device)
        self.device = session_device(self._session)
        self._outputs = list(self.heads)

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._outputs, inputs)
        return dict(zip(self._outputs, outs, strict=True))
