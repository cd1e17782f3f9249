"""The task registry is consistent with itself, the datasets and the prompts."""

import pytest

from affedge.datasets import DATASETS
from affedge.errors import AffedgeError
from affedge.metrics import LABEL_METRICS, SCORE_METRICS
from affedge.prompts import ITEM_SLOT, item_body, prompt_spec
from affedge.records import Record, Turn
from affedge.tasks import BENCHMARKS, LEVEL_INSTRUCTIONS, TASKS, get_benchmark, get_task


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
