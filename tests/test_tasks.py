"""The task registry is consistent with itself, the datasets and the prompts."""

import pytest

import affedge.tasks
from affedge import benchmarks
from affedge.benchmarks import (
    BENCHMARK_TABLE,
    BENCHMARKS,
    get_benchmark,
    report_targets,
    stage_datasets,
    task_datasets,
    training_sources,
)
from affedge.datasets import DATASETS
from affedge.errors import AffedgeError
from affedge.metrics import LABEL_METRICS, SCORE_METRICS
from affedge.prompts import ITEM_SLOT, item_body, prompt_spec
from affedge.records import Record, Turn
from affedge.tasks import (
    EMOTION_LABELS,
    HEADS,
    LABEL_ALIASES,
    LEVEL_INSTRUCTIONS,
    TASKS,
    get_task,
    head_for_task,
)


@pytest.mark.parametrize("bench", BENCHMARKS, ids=lambda b: b.name)
def test_every_benchmark_reads_a_real_layer_with_a_known_metric(bench):
    info = DATASETS[bench.dataset]
    task = TASKS[bench.task]
    assert "test" in info.splits
    if task.kind == "score":
        assert bench.layer in info.score_layers
        known = set(SCORE_METRICS)
    else:
        assert set(bench.label_set()) <= set(info.layers[bench.layer])
        known = {*LABEL_METRICS, "f1_positive"}
        if "f1_positive" in (bench.metric, *bench.extra_metrics):
            assert bench.positive in bench.label_set()
    assert {bench.metric, *bench.extra_metrics} <= known
    for layer, value in bench.where.items():
        assert value in info.layers[layer]


def test_every_task_has_a_benchmark_and_its_level_instruction():
    for task in TASKS.values():
        assert any(b.task == task.name for b in BENCHMARKS)
        assert task.instruction.startswith(LEVEL_INSTRUCTIONS[task.level].split("{")[0])
        assert (task.kind == "classify") == bool(task.labels)


def test_levels_follow_the_progressive_paradigm():
    assert TASKS["sentiment"].level == "SA" and not TASKS["sentiment"].uses_context
    assert TASKS["emotion"].level == "ERC" and TASKS["emotion"].uses_context
    assert TASKS["sarcasm"].level == "SD" and "incongruity" in TASKS["sarcasm"].instruction


def test_lookups_fail_clearly():
    with pytest.raises(AffedgeError, match="unknown task 'joyfulness'"):
        get_task("joyfulness")
    with pytest.raises(AffedgeError, match="choose one of sentiment"):
        get_task("valence", "classify")
    with pytest.raises(AffedgeError, match="datasets for polarity: sst2"):
        get_benchmark("polarity", "meld")


def test_prompt_puts_options_in_the_shared_head_and_the_item_last():
    spec = prompt_spec(TASKS["emotion"])
    user = spec.messages[-1]["content"]
    head, _, tail = user.partition(ITEM_SLOT)
    assert tail == "" and all(label in head for label in TASKS["emotion"].labels)
    assert TASKS["emotion"].instruction in head
    assert prompt_spec(TASKS["sentiment"], ["good", "bad"]).answers == ("good", "bad")
    assert prompt_spec(TASKS["valence"]).answers == tuple("0123456789")


def test_item_body_renders_context_speakers_and_aspect():
    rec = Record(
        id="1",
        text="Sure, great idea.",
        speaker="B",
        context=(Turn("Let's paint it pink", "A"), Turn("Or green?", None)),
        aspect="colour",
    )
    emotion = item_body(TASKS["emotion"], rec)
    assert emotion.splitlines() == [
        "Dialogue:",
        "A: Let's paint it pink",
        "Or green?",
        "Target utterance: B: Sure, great idea.",
    ]
    assert item_body(TASKS["emotion"], rec, context_turns=1).count("\n") == 2
    assert item_body(TASKS["sentiment"], rec) == "Sentence: Sure, great idea."
    assert item_body(TASKS["implicit"], rec).endswith("Aspect: colour")


# ------------------------------------------------------------------ the benchmark table


def test_the_task_registry_re_exports_the_table():
    assert affedge.tasks.BENCHMARKS is BENCHMARKS
    assert affedge.tasks.get_benchmark is get_benchmark
    assert affedge.tasks.Benchmark is benchmarks.Benchmark
    with pytest.raises(AttributeError):
        _ = affedge.tasks.NOT_A_NAME


def test_every_row_names_a_task_and_a_dataset_and_only_training_rows_lack_a_metric():
    for row in BENCHMARK_TABLE:
        assert row.task in TASKS and row.dataset in DATASETS
        assert row.metric or (row.train and not row.reports), row.name
    assert [b.name for b in BENCHMARK_TABLE if not b.metric] == ["emotion/semeval2018_ec"]


@pytest.mark.parametrize("use", ["encoder", "progressive", "multitask"])
def test_training_positions_are_one_to_n(use):
    rows = training_sources(use)
    assert [b.train[use] for b in rows] == list(range(1, len(rows) + 1))


@pytest.mark.parametrize("report", ["encoder_report", "train_report"])
def test_report_positions_are_one_to_n(report):
    rows = report_targets(report)
    assert [b.reports[report] for b in rows] == list(range(1, len(rows) + 1))


def test_the_default_training_data_of_every_recipe():
    """The defaults the recorded runs were trained with (order changes a seeded run)."""
    assert [b.name for b in training_sources("encoder")] == [
        "sentiment/tweet_eval_sentiment",
        "polarity/sst2",
        "emotion/meld",
        "sentiment/meld",
        "emotion/dailydialog",
        "emotion/tweet_eval_emotion",
        "emotion/semeval2018_ec",
        "sarcasm/tweet_eval_irony",
        "sarcasm/mustard",
        "sarcasm/mustard_plus_plus",
        "valence/semeval2018_v_reg",
        "valence/emobank",
        *(f"{e}/semeval2018_ei_{e}" for e in ("anger", "fear", "joy", "sadness")),
    ]
    assert all(head_for_task(b.task) for b in training_sources("encoder"))
    assert stage_datasets("SA") == ("sst2", "tweet_eval_sentiment")
    assert stage_datasets("ERC") == ("meld", "emorynlp", "dailydialog")
    assert stage_datasets("SD") == ("mustard", "mustard_plus_plus", "tweet_eval_irony")
    assert task_datasets() == {
        "sentiment": ("tweet_eval_sentiment",),
        "emotion": ("tweet_eval_emotion",),
        "valence": ("semeval2018_v_reg", "emobank"),
        **{e: (f"semeval2018_ei_{e}",) for e in ("anger", "fear", "joy", "sadness")},
        "implicit": ("semeval2014_laptops", "semeval2014_restaurants"),
    }
    assert list(task_datasets()) == [
        "sentiment",
        "emotion",
        "valence",
        "anger",
        "fear",
        "joy",
        "sadness",
        "implicit",
    ]


def test_report_targets_have_goals_and_one_headline_per_level():
    encoder = report_targets("encoder_report")
    assert all("encoder_report" in b.goals and b.metric for b in encoder)
    assert [(b.name, b.goals["encoder_report"]) for b in encoder][:5] == [
        ("polarity/sst2", 0.90),
        ("sentiment/tweet_eval_sentiment", 0.70),
        ("emotion/tweet_eval_emotion", 0.75),
        ("sarcasm/tweet_eval_irony", 0.65),
        ("emotion/meld", 0.60),
    ]
    levels = [TASKS[b.task].level for b in report_targets("train_report")]
    assert levels == ["SA", "ERC", "SD"]
    assert [b.dataset for b in report_targets("train_report")] == ["sst2", "meld", "mustard"]
    llm = report_targets("llm_report")
    assert all("llm_report" in b.goals and b.metric for b in llm)
    assert [(b.name, b.goals["llm_report"]) for b in llm][:6] == [
        ("polarity/sst2", 0.89),
        ("sentiment/tweet_eval_sentiment", 0.65),
        ("emotion/meld", 0.58),
        ("emotion/emorynlp", 0.36),
        ("sarcasm/mustard", 0.68),
        ("sarcasm/tweet_eval_irony", 0.62),
    ]


def test_label_sets_come_from_the_registries():
    """Heads and dataset-specific benchmark labels are derived, in the trained layouts."""
    assert HEADS["sentiment"].labels == ("negative", "neutral", "positive")
    assert set(HEADS["sentiment"].labels) == set(TASKS["sentiment"].labels)
    assert HEADS["sarcasm"].labels == ("not sarcastic", "sarcastic")
    assert HEADS["intensity"].labels == ("anger", "fear", "joy", "sadness")
    assert set(TASKS["emotion"].labels) < set(EMOTION_LABELS)
    irony = get_benchmark("sarcasm", "tweet_eval_irony")
    assert irony.label_set() == ("ironic", "not ironic") and irony.positive == "ironic"
    assert [LABEL_ALIASES[x] for x in irony.label_set()] == list(TASKS["sarcasm"].labels)
    emory = get_benchmark("emotion", "emorynlp").label_set()
    assert emory == ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")
    emobank = get_benchmark("valence", "emobank")
    assert emobank.score_range == (1.0, 5.0)
