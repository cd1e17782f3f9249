"""The engine interface every backend implements (one file per backend in this package)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from affedge.records import Record
from affedge.tasks import Task


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
    """A loaded model that can score labels, score a number and generate text.

    Engines are deterministic: the same record, task and label set always give the same
    result, whatever was processed before it.
    """

    name: str

    @abstractmethod
    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        """Label probabilities per record, yielded in input order as they are computed."""

    @abstractmethod
    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        """A [0, 1] intensity per record, yielded in input order."""

    @abstractmethod
    def generate(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 32, stop: Sequence[str] = ()
    ) -> str:
        """Greedy chat completion (used by baselines and negotiation, not by classify)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources early (engines also free them when collected)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
