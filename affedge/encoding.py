"""Turning records into encoder inputs, shared by training and the ONNX runtime.

Training (train/encoder.py) and the runtime (engines/onnx.py) call the same function on
the same ``tokenizers`` tokenizer, so the exported model sees at run time exactly what it saw
in training. A conversation item is a text pair: the target utterance, then its most recent
context turns newest first, so that truncation drops the oldest turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affedge.records import Record

#: Dialogue turns an encoder input pairs with the utterance (decoder prompts show more:
#: :data:`affedge.prompts.DECODER_CONTEXT_TURNS`).
ENCODER_CONTEXT_TURNS = 3
TURN_SEPARATOR = " | "


def text_pair(record: Record, context_turns: int = ENCODER_CONTEXT_TURNS) -> str | tuple[str, str]:
    """The encoder input of ``record``: its text, or (text, context) when it has context."""
    text = f"{record.text} (aspect: {record.aspect})" if record.aspect else record.text
    if context_turns <= 0 or not record.context:
        return text
    turns = record.context[-context_turns:][::-1]
    context = TURN_SEPARATOR.join(f"{t.speaker}: {t.text}" if t.speaker else t.text for t in turns)
    return (text, context)


class EncoderTokenizer:
    """A ``tokenizers`` tokenizer set up for padded, truncated encoder batches."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        #: Truncating, not padding: :meth:`pad` pads batches (one tokenizer, parsed once; a
        #: second copy cost a cold start ~15 ms).
        self.tokenizer = Tokenizer.from_file(str(path))
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer.no_padding()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = pad_id if pad_id is not None else 0
        self.pad_type_id = 0

    def encode(
        self, records: Sequence[Record], context_turns: int = ENCODER_CONTEXT_TURNS
    ) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Model inputs (int64, padded to the longest) and whether each item was truncated."""
        encodings, truncated = self.encode_unpadded(records, context_turns)
        return self.pad(encodings), truncated

    def __call__(
        self, records: Sequence[Record], context_turns: int = ENCODER_CONTEXT_TURNS
    ) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, padded to the longest)."""
        return self.encode(records, context_turns)[0]

    def encode_unpadded(
        self, records: Sequence[Record], context_turns: int = ENCODER_CONTEXT_TURNS
    ) -> tuple[list[Any], list[bool]]:
        """Each record's truncated encoding without padding (``len(e.ids)`` is its token
        length) and whether it was truncated; :meth:`pad` batches any subset of them."""
        encodings = self.tokenizer.encode_batch([text_pair(r, context_turns) for r in records])
        return encodings, [bool(e.overflowing) for e in encodings]

    def pad(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """Model inputs of :meth:`encode_unpadded` encodings, right-padded to the longest of
        them: what :meth:`encode` gives for the same records."""
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.full((len(encodings), width), self.pad_type_id, dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = e.attention_mask
            types[row, :n] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
