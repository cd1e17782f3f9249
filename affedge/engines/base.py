"""The engine interface every backend implements (one file per backend in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

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


@dataclass(frozen=True, slots=True)
class LabelResult:
    """A probability for every label (summing to 1), in the label set's order."""

    probs: dict[str, float]
    truncated: bool = False

    @property
    def label(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """A score in [0, 1] and the distribution over the answer scale it is the mean of."""

    score: float
    distribution: tuple[float, ...] = ()
    truncated: bool = False


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
