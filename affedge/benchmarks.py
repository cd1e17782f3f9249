"""The one benchmark table: task x dataset, its metric, and who uses the row by default.

Each row of :data:`BENCHMARK_TABLE` is a :class:`Benchmark`: a registry task on one dataset
(gold layer, label set, filter), the metric its literature reports, and where it is used by
default:

* ``train``: the training recipes that train on it, each with the row's position in that
  recipe's default data (positions order the data; order changes a seeded run):
  ``encoder`` (the multi-task encoder, train/encoder_data.py; the head follows from the task),
  ``progressive`` (the GSA stages, train/progressive.py; the stage follows from the task's level)
  and ``multitask`` (the multi-task LLM, train/multitask.py; grouped by task);
* ``reports``: the reports that headline it, with its row position there, and ``goals``, the
  quality target each report checks (``encoder_report``: the edge encoder's targets as its
  issue states them; ``train_report``: the stage benchmarks the GSA paper reports, one per
  level; ``llm_report``: the fine-tuned LLM adapters' targets, bench/llm_report.py).

Every recipe and report derives its default table from here (:func:`training_sources`,
:func:`stage_datasets`, :func:`task_datasets`, :func:`report_targets`), so a dataset's default
use is written once. :data:`BENCHMARKS` is what evaluations score: every row with a metric (the
multi-label SemEval-2018 E-c row has none; it only trains the encoder's emotion head).

Splits: every dataset has train/validation/test; recipes train on ``train``, select and measure
forgetting on ``validation``, and reports score ``test``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from affedge.datasets import DATASETS
from affedge.errors import AffedgeError
from affedge.tasks import INTENSITY_EMOTIONS, LABEL_ALIASES, TASKS, Level, get_task

Recipe = Literal["encoder", "progressive", "multitask"]
Report = Literal["encoder_report", "train_report", "llm_report"]


@dataclass(frozen=True)
class Benchmark:
    """A task evaluated on one dataset with the metric its literature reports.

    ``layer`` is the gold annotation read from each record (``Record.labels`` for
    classification, ``Record.scores`` for score tasks); ``labels`` overrides the task's label
    set where the dataset has its own; ``where`` keeps only records whose label layers have
    these values. Records whose gold label is outside the label set (SemEval-2014 "conflict")
    are dropped and counted. ``score_range`` is the scale of a score layer (training maps it
    to [0, 1]); ``train``, ``reports`` and ``goals``: see the module docstring. An empty
    ``metric`` marks a training-only row.
    """

    task: str
    dataset: str
    layer: str
    metric: str
    labels: tuple[str, ...] | None = None
    where: dict[str, str] = field(default_factory=dict)
    extra_metrics: tuple[str, ...] = ()
    positive: str | None = None
    note: str = ""
    score_range: tuple[float, float] = (0.0, 1.0)
    train: Mapping[Recipe, int] = field(default_factory=dict)
    reports: Mapping[Report, int] = field(default_factory=dict)
    goals: Mapping[Report, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.dataset}"

    def label_set(self) -> tuple[str, ...]:
        return self.labels if self.labels is not None else TASKS[self.task].labels


#: A sarcasm-task label -> the TweetEval irony label it stands for.
_IRONY_OF = {sarcasm: irony for irony, sarcasm in LABEL_ALIASES.items()}

BENCHMARK_TABLE: tuple[Benchmark, ...] = (
    Benchmark(
        "polarity",
        "sst2",
        "sentiment",
        "accuracy",
        extra_metrics=("macro_f1",),
        train={"encoder": 2, "progressive": 1},
        reports={"encoder_report": 1, "train_report": 1, "llm_report": 1},
        goals={"encoder_report": 0.90, "llm_report": 0.89},
    ),
    Benchmark(
        "sentiment",
        "tweet_eval_sentiment",
        "sentiment",
        "macro_recall",
        extra_metrics=("accuracy", "macro_f1"),
        train={"encoder": 1, "progressive": 2, "multitask": 1},
        reports={"encoder_report": 2, "llm_report": 2},
        goals={"encoder_report": 0.70, "llm_report": 0.65},
    ),
    Benchmark(
        "sentiment",
        "meld",
        "sentiment",
        "weighted_f1",
        extra_metrics=("accuracy",),
        train={"encoder": 4},
    ),
    Benchmark(
        "emotion",
        "meld",
        "emotion",
        "weighted_f1",
        extra_metrics=("accuracy",),
        train={"encoder": 3, "progressive": 3},
        reports={"encoder_report": 5, "train_report": 2, "llm_report": 3},
        goals={"encoder_report": 0.60, "llm_report": 0.58},
    ),
    Benchmark(
        "emotion",
        "emorynlp",
        "emotion",
        "weighted_f1",
        labels=DATASETS["emorynlp"].layers["emotion"],
        extra_metrics=("accuracy",),
        train={"progressive": 4},
        reports={"llm_report": 4},
        goals={"llm_report": 0.36},
    ),
    Benchmark(
        "emotion",
        "dailydialog",
        "emotion",
        "micro_f1_no_neutral",
        extra_metrics=("weighted_f1", "accuracy"),
        note="micro-F1 over the emotion classes, neutral excluded, as the ERC literature does",
        train={"encoder": 5, "progressive": 5},
    ),
    Benchmark(
        "emotion",
        "tweet_eval_emotion",
        "emotion",
        "macro_f1",
        labels=DATASETS["tweet_eval_emotion"].layers["emotion"],
        extra_metrics=("accuracy",),
        train={"encoder": 6, "multitask": 2},
        reports={"encoder_report": 3},
        goals={"encoder_report": 0.75},
    ),
    Benchmark(
        "emotion",
        "semeval2018_ec",
        "emotions",
        "",
        note="multi-label: soft targets for the encoder's emotion head (train/encoder_data.py)",
        train={"encoder": 7},
    ),
    Benchmark(
        "sarcasm",
        "mustard",
        "sarcasm",
        "weighted_f1",
        extra_metrics=("accuracy", "f1_positive"),
        positive="sarcastic",
        train={"encoder": 9, "progressive": 6},
        reports={"train_report": 3, "llm_report": 5},
        goals={"llm_report": 0.68},
    ),
    Benchmark(
        "sarcasm",
        "mustard_plus_plus",
        "sarcasm",
        "weighted_f1",
        extra_metrics=("accuracy", "f1_positive"),
        positive="sarcastic",
        train={"encoder": 10, "progressive": 7},
    ),
    Benchmark(
        "sarcasm",
        "tweet_eval_irony",
        "irony",
        "f1_positive",
        labels=tuple(_IRONY_OF[label] for label in TASKS["sarcasm"].labels),
        extra_metrics=("accuracy", "macro_f1"),
        positive=_IRONY_OF["sarcastic"],
        train={"encoder": 8, "progressive": 8},
        reports={"encoder_report": 4, "llm_report": 6},
        goals={"encoder_report": 0.65, "llm_report": 0.62},
    ),
    *(
        Benchmark(
            "implicit",
            f"semeval2014_{domain}",
            "sentiment",
            "macro_f1",
            where={"implicit": "implicit"},
            extra_metrics=("accuracy",),
            note="implicit-sentiment aspect terms only; conflict terms dropped",
            train={"multitask": position},
        )
        for position, domain in enumerate(("laptops", "restaurants"), start=9)
    ),
    Benchmark(
        "valence",
        "semeval2018_v_reg",
        "valence",
        "pearson",
        extra_metrics=("spearman",),
        train={"encoder": 11, "multitask": 3},
        reports={"encoder_report": 10, "llm_report": 7},
        goals={"encoder_report": 0.80, "llm_report": 0.78},
    ),
    Benchmark(
        "valence",
        "emobank",
        "valence",
        "pearson",
        extra_metrics=("spearman",),
        score_range=(1.0, 5.0),
        train={"encoder": 12, "multitask": 4},
    ),
    *(
        Benchmark(
            e,
            f"semeval2018_ei_{e}",
            e,
            "pearson",
            extra_metrics=("spearman",),
            train={"encoder": 13 + i, "multitask": 5 + i},
            reports={"encoder_report": 6 + i, "llm_report": 8 + i},
            goals={"encoder_report": 0.70, "llm_report": 0.65},
        )
        for i, e in enumerate(INTENSITY_EMOTIONS)
    ),
)

#: The rows evaluations score (every row with a metric), in table order.
BENCHMARKS: tuple[Benchmark, ...] = tuple(b for b in BENCHMARK_TABLE if b.metric)


def get_benchmark(task: str, dataset: str) -> Benchmark:
    """The benchmark of ``task`` on ``dataset``; clear error listing what exists otherwise."""
    get_task(task)
    for bench in BENCHMARKS:
        if bench.task == task and bench.dataset == dataset:
            return bench
    known = [b.dataset for b in BENCHMARKS if b.task == task]
    raise AffedgeError(
        f"no benchmark of task {task!r} on dataset {dataset!r}: "
        f"datasets for {task}: {', '.join(known)}"
    )


# ------------------------------------------------------------------ derived tables


def training_sources(recipe: Recipe) -> tuple[Benchmark, ...]:
    """The rows ``recipe`` trains on by default, in that recipe's order."""
    rows = [b for b in BENCHMARK_TABLE if recipe in b.train]
    return tuple(sorted(rows, key=lambda b: b.train[recipe]))


def stage_datasets(level: Level) -> tuple[str, ...]:
    """The default datasets of the progressive stage at ``level`` (SA, ERC or SD), in order."""
    return tuple(b.dataset for b in training_sources("progressive") if TASKS[b.task].level == level)


def task_datasets() -> dict[str, tuple[str, ...]]:
    """The multi-task recipe's default: task -> its datasets, tasks in the recipe's order."""
    out: dict[str, list[str]] = {}
    for bench in training_sources("multitask"):
        out.setdefault(bench.task, []).append(bench.dataset)
    return {task: tuple(names) for task, names in out.items()}


def report_targets(report: Report) -> tuple[Benchmark, ...]:
    """The rows ``report`` headlines, in its order."""
    rows = [b for b in BENCHMARK_TABLE if report in b.reports]
    return tuple(sorted(rows, key=lambda b: b.reports[report]))
