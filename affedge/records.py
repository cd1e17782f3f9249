"""The one record type every loader, reader, engine and writer exchanges."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier utterance of a dialogue."""

    text: str
    speaker: str | None = None


@dataclass(slots=True)
class Record:
    """One item to annotate or evaluate.

    ``labels`` maps an annotation layer (``"sentiment"``, ``"emotion"``, ``"sarcasm"``...) to the
    gold label of that layer in affedge's label vocabulary (lower case, see
    :mod:`affedge.datasets`); multi-label layers hold a tuple. ``scores`` maps a numeric layer
    (``"valence"``, ``"anger"``...) to its gold value on the dataset's own scale.
    """

    id: str
    text: str
    context: tuple[Turn, ...] = ()
    speaker: str | None = None
    labels: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    aspect: str | None = None
    split: str | None = None
    dataset: str | None = None
    meta: dict[str, object] = field(default_factory=dict)
