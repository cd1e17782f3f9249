"""Multi-task encoders on onnxruntime (tokenizers + onnxruntime; no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from affedge.artifact import HeadSpec
from affedge.engines.encoder import EncoderEngine, model_path
from affedge.engines.ort import session, session_device
from affedge.errors import ModelError
from affedge.models import ModelRef

#: The inputs :meth:`affedge.encoding.EncoderTokenizer.pad` gives an encoder.
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
        check_heads(self._session, self.heads, self.path)

    def _forward(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self._session.run(self._outputs, inputs)
        except Exception as exc:  # onnxruntime's own Fail/InvalidArgument/RuntimeException
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"{self.path}: onnxruntime cannot run it: {first}") from None
        return dict(zip(self._outputs, outs, strict=True))


def check_heads(sess: Any, heads: Mapping[str, HeadSpec], path: Path) -> None:
    """ModelError (one line) unless the ONNX model answers the manifest: every head is an
    output whose last dimension, when fixed, is the head's label count, and every input is
    one the encoder tokenizer gives."""
    outputs = {o.name: list(o.shape or ()) for o in sess.get_outputs()}
    missing = [name for name in heads if name not in outputs]
    if missing:
        raise ModelError(
            f"{path}: the manifest's heads {', '.join(missing)} are not outputs of the ONNX "
            f"model (its outputs: {', '.join(outputs) or 'none'})"
        )
    for name, head in heads.items():
        dims = outputs[name]
        width = dims[-1] if len(dims) > 1 else 1 if dims else None
        if isinstance(width, int) and width != len(head.labels):
            raise ModelError(
                f"{path}: head {name!r} has {len(head.labels)} labels in the manifest but the "
                f"ONNX model's {name!r} output has {width} values per item"
            )
    unknown = [i.name for i in sess.get_inputs() if i.name not in ENCODER_INPUTS]
    if unknown:
        raise ModelError(
            f"{path}: the ONNX model wants inputs {', '.join(unknown)}; an affedge encoder "
            f"takes {', '.join(ENCODER_INPUTS)}"
        )
