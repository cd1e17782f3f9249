"""The engine interface every backend implements (one file per backend in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar

from affedge.calibration import calibration_key
from affedge.errors import ModelError
from affedge.records import Record
from affedge.tasks import Task


class Capability(str, Enum):
    """What an engine can do beyond the interface every engine has."""

    #: Label probabilities for a task (``classify``).
    LABELS = "labels"
    #: A [0, 1] intensity for a task (``score``).
    SCORES = "scores"
    #: Every head in one pass (``analyze``, ``--task all``).
    ALL_HEADS = "all-heads"
    #: Multi-turn chat with label scoring (``chat``, SANM negotiation).
    CHAT = "chat"
    #: Any label set (``--labels``); without it only subsets of a head's labels.
    CUSTOM_LABELS = "custom-labels"
    #: Texts longer than the context read whole in windows (``--long chunk``,
    #: :meth:`Engine.chunks`); without it they are truncated to the context.
    CHUNKS = "chunks"


@dataclass(frozen=True, slots=True)
class LabelResult:
    """A probability for every label (summing to 1), in the label set's order; ``chunks``:
    the windows a long text was read in (``--long chunk``), their results averaged."""

    probs: dict[str, float]
    truncated: bool = False
    chunks: int = 1

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """A score in [0, 1] and the distribution over the answer scale it is the mean of."""

    score: float
    distribution: tuple[float, ...] = ()
    truncated: bool = False
    chunks: int = 1


class Engine(ABC):
    """A loaded model that scores labels and numbers; backends declare what else they can do
    in :attr:`capabilities` (commands check it, never ``hasattr``).

    Engines are deterministic: the same record, task and label set always give the same
    result, whatever was processed before it.
    """

    name: str
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.LABELS, Capability.SCORES}
    )
    #: Temperatures fitted on validation data (the manifest's ``calibration``; backends set
    #: it from their artifact) and whether label probabilities apply them
    #: (``--no-calibration`` turns it off to see raw probabilities).
    temperatures: Mapping[str, float] = MappingProxyType({})
    calibrate: bool = True
    #: Where the model runs: ``cpu`` or ``cuda`` (affedge/device.py; GPU backends set it).
    device: str = "cpu"

    def temperature(self, task: Task, labels: Sequence[str] | None = None) -> float:
        """The temperature for ``task`` over ``labels`` (1.0: uncalibrated or turned off)."""
        if not self.calibrate or not self.temperatures:
            return 1.0
        subset = None if labels is None or tuple(labels) == tuple(task.labels) else labels
        return self.temperatures.get(calibration_key(task.name, subset), 1.0)

    @abstractmethod
    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        """Label probabilities per record, yielded in input order as they are computed."""

    @abstractmethod
    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        """A [0, 1] intensity per record, yielded in input order."""

    def analyze(self, records: Iterable[Record]) -> Iterator[dict[str, Any]]:
        """Every head per record (engines with :attr:`Capability.ALL_HEADS`)."""
        raise ModelError(f"{self.name}: answers one task per run (no --task all)")

    @property
    def block_size(self) -> int:
        """Records whose results may depend on each other: an item's result is a function of
        the aligned block of this many records it falls in (1: of the item alone). Batched
        engines with per-batch numerics (int8 dynamic quantization scales activations per
        batch) say their look-ahead window, so a resumed run re-reads the block it stopped
        in and writes what an uninterrupted run writes."""
        return 1

    def chunks(self, record: Record) -> Iterator[tuple[Record, int]]:
        """The windows ``record`` is read in with ``--long chunk``, in text order, each a
        record that fits the context (same context, speaker and aspect) with its weight (its
        text's token count); :func:`affedge.chunking.read_long` scores them and averages.
        Engines with :attr:`Capability.CHUNKS` override it; this default reads the record
        whole (truncated to the context, as ``--long truncate``)."""
        yield record, 1

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability, what: str) -> None:
        """ModelError naming ``what`` unless this engine has ``capability``."""
        if capability not in self.capabilities:
            raise ModelError(f"{what} is not supported by {self.name} ({type(self).__name__})")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources early (engines also free them when collected)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
