"""The one registry of affect tasks: labels, progressive instructions, metrics, encoder heads.

Training, export checks, the runtime and evaluation all read this module; nothing else in the
project spells out a task's label set or instruction. Which dataset evaluates (and trains) which
task with which metric is the benchmark table, :mod:`affedge.benchmarks`; its ``Benchmark``,
``BENCHMARKS`` and ``get_benchmark`` can also be imported from here.

Instructions follow the progressive levels of GSA (papers/gsa-progressive-tuning.md, section
4.1): sentence-level sentiment analysis looks at the semantics of the sentence (SA);
emotion recognition in conversation adds the dialogue context (ERC); sarcasm detection adds
the incongruity between the two and in the wording (SD).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from affedge.errors import AffedgeError

if TYPE_CHECKING:  # re-exported lazily by __getattr__ below (affedge.benchmarks imports us)
    from affedge.benchmarks import BENCHMARKS, Benchmark, get_benchmark  # noqa: F401

Level = Literal["SA", "ERC", "SD"]
Kind = Literal["classify", "score"]

#: The progressive instruction of each level; ``{target}`` is what the task determines.
LEVEL_INSTRUCTIONS: dict[Level, str] = {
    "SA": "Consider the semantic information of the sentence to determine its {target}.",
    "ERC": (
        "Consider both the semantic information of the target utterance itself and the "
        "contextual information of the dialogue it is situated in to determine its {target}."
    ),
    "SD": (
        "Consider whether there is an incongruity between the emotional states of the target "
        "utterance's semantic information and its contextual information, and whether the "
        "expression of the target utterance involves linguistic incongruity, to determine "
        "{target}."
    ),
}

#: Score tasks are read as the expected value over these answer tokens (0 lowest, 9 highest).
SCORE_TOKENS: tuple[str, ...] = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Task:
    """One affect task.

    ``labels`` is the default label set of a classification task (benchmarks may bring the
    dataset's own set, e.g. EmoryNLP's seven emotions); ``scale`` describes the 0-9 answer of a
    score task, which affedge maps to [0, 1].
    """

    name: str
    kind: Kind
    level: Level
    target: str
    description: str
    labels: tuple[str, ...] = ()
    scale: str = ""
    uses_context: bool = False
    uses_aspect: bool = False
    metric: str = "accuracy"

    @property
    def instruction(self) -> str:
        """The progressive instruction of this task's level, filled in for this task."""
        return LEVEL_INSTRUCTIONS[self.level].format(target=self.target)


_EKMAN_NEUTRAL = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")

#: The emotions with an intensity task each (SemEval-2018 EI-reg), one encoder head for all.
INTENSITY_EMOTIONS: tuple[str, ...] = ("anger", "fear", "joy", "sadness")


def _intensity(emotion: str) -> Task:
    return Task(
        name=emotion,
        kind="score",
        level="SA",
        target=f"intensity of {emotion}",
        description=f"{emotion.capitalize()} intensity in [0, 1] (SemEval-2018 EI-reg).",
        scale=f"0 means no {emotion} at all and 9 means extreme {emotion}",
        metric="pearson",
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="sentiment",
            kind="classify",
            level="SA",
            target="sentiment polarity",
            description="Three-way sentence sentiment.",
            labels=("positive", "negative", "neutral"),
            metric="macro_recall",
        ),
        Task(
            name="polarity",
            kind="classify",
            level="SA",
            target="sentiment polarity",
            description="Binary sentence polarity (SST-2).",
            labels=("positive", "negative"),
            metric="accuracy",
        ),
        Task(
            name="emotion",
            kind="classify",
            level="ERC",
            target="emotion",
            description="Emotion of an utterance in its conversation (MELD label set).",
            labels=_EKMAN_NEUTRAL,
            uses_context=True,
            metric="weighted_f1",
        ),
        Task(
            name="sarcasm",
            kind="classify",
            level="SD",
            target="whether the target utterance is sarcastic",
            description="Sarcasm of an utterance, with its conversation when given.",
            labels=("sarcastic", "not sarcastic"),
            uses_context=True,
            metric="weighted_f1",
        ),
        Task(
            name="implicit",
            kind="classify",
            level="SA",
            target="sentiment polarity towards the given aspect, which may be implied rather "
            "than stated",
            description="Aspect sentiment, including implicit sentiment (SemEval-2014).",
            labels=("positive", "negative", "neutral"),
            uses_aspect=True,
            metric="macro_f1",
        ),
        Task(
            name="valence",
            kind="score",
            level="SA",
            target="valence (how positive or negative the feeling is)",
            description="Valence intensity in [0, 1] (SemEval-2018 V-reg).",
            scale="0 means very negative and 9 means very positive",
            metric="pearson",
        ),
        *(_intensity(e) for e in INTENSITY_EMOTIONS),
    )
}

#: `affedge classify --task all`: every head of a multi-head encoder in one record.
ALL_TASKS = "all"

CLASSIFY_TASKS = tuple(n for n, t in TASKS.items() if t.kind == "classify")
SCORE_TASKS = tuple(n for n, t in TASKS.items() if t.kind == "score")


def get_task(name: str, kind: Kind | None = None) -> Task:
    """Look a task up by name, optionally insisting on its kind; clear error otherwise."""
    task = TASKS.get(name)
    choices = CLASSIFY_TASKS if kind == "classify" else SCORE_TASKS if kind == "score" else TASKS
    if task is None or (kind is not None and task.kind != kind):
        raise AffedgeError(f"unknown task {name!r}: choose one of {', '.join(choices)}")
    return task


# ------------------------------------------------------------------ multi-head encoders


@dataclass(frozen=True)
class Head:
    """One output head of a multi-task encoder and the registry tasks it answers.

    Classification heads return logits over ``labels``; a task or benchmark asking for a
    subset (``polarity`` from the 3-way sentiment head, TweetEval's four emotions) gets the
    softmax over that subset. Regression heads return one [0, 1] value per name in ``labels``.
    """

    name: str
    kind: Literal["classify", "regress"]
    labels: tuple[str, ...]
    tasks: tuple[str, ...]


#: The harmonised emotion labels of the encoder's emotion head (MELD's seven plus TweetEval's
#: optimism); how each dataset maps onto them is in train/encoder_data.py and README.
EMOTION_LABELS: tuple[str, ...] = (
    "neutral",
    "anger",
    "disgust",
    "fear",
    "joy",
    "sadness",
    "surprise",
    "optimism",
)


def _alphabetical(task: str) -> tuple[str, ...]:
    """A task's labels in the alphabetical order trained encoders output them in."""
    return tuple(sorted(TASKS[task].labels))


HEADS: dict[str, Head] = {
    h.name: h
    for h in (
        Head("sentiment", "classify", _alphabetical("sentiment"), ("sentiment", "polarity")),
        Head("emotion", "classify", EMOTION_LABELS, ("emotion",)),
        Head("sarcasm", "classify", _alphabetical("sarcasm"), ("sarcasm",)),
        Head("valence", "regress", ("valence",), ("valence",)),
        Head("intensity", "regress", INTENSITY_EMOTIONS, INTENSITY_EMOTIONS),
    )
}

#: Label names some datasets use for a head's label (TweetEval irony for sarcasm).
LABEL_ALIASES: dict[str, str] = {"ironic": "sarcastic", "not ironic": "not sarcastic"}


def head_for_task(task: str) -> Head:
    """The encoder head answering ``task``."""
    for head in HEADS.values():
        if task in head.tasks:
            return head
    raise AffedgeError(f"no encoder head answers task {task!r}")


_FROM_BENCHMARKS = ("BENCHMARKS", "Benchmark", "get_benchmark")


def __getattr__(name: str) -> Any:
    """``Benchmark``, ``BENCHMARKS`` and ``get_benchmark`` from :mod:`affedge.benchmarks`,
    imported on first use: that module imports this one, so a top-level import would be a cycle.
    """
    if name in _FROM_BENCHMARKS:
        from affedge import benchmarks

        return getattr(benchmarks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
