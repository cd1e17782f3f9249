"""`--format labelstudio` and `--format argilla` from the real CLI and shipped encoder, checked
against JSON Schemas written from each tool's documented import format.

Label Studio: "Import pre-annotated data" (guide/predictions.md) and "Basic Label Studio JSON
format" (guide/tasks.md): a list of tasks with ``data`` and ``predictions`` (``model_version``,
``score`` in 0..1, ``result`` items with ``id``, ``from_name``, ``to_name``, ``type``,
``value``); ``choices`` values are ``{"choices": [...]}``, ``number`` values ``{"number": x}``.
Argilla 2.x: ``rg.Record(id, fields, metadata, suggestions)`` with ``rg.Suggestion(question_name,
value, score, agent, type in {model, human})``; names lower case ``[a-z0-9_-]``.
(Both SDKs pull in hundreds of MB, datasets and pandas among them, so the tests use schemas.)
"""

from __future__ import annotations

import json

import pytest

jsonschema = pytest.importorskip("jsonschema")

MODEL = "minilm-affect-int8"
TEXTS = [
    "What a wonderful, moving film.",
    "The service was slow and the food was cold.",
    "",
    "The package arrived on Tuesday.",
    "Oh great, another Monday.",
]
IDS = [1, 2, 4, 5]
NAME = r"^(?=.*[a-z0-9])[a-z0-9_-]+$"  # Argilla's rule for field, question and metadata names

LABEL_STUDIO_RESULT = {
    "type": "object",
    "required": ["id", "from_name", "to_name", "type", "value"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "from_name": {"type": "string", "minLength": 1},
        "to_name": {"const": "text"},
        "type": {"enum": ["choices", "number"]},
        "value": {"type": "object"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "readonly": {"type": "boolean"},
        "hidden": {"type": "boolean"},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "choices"}}},
            "then": {
                "properties": {
                    "value": {
                        "required": ["choices"],
                        "additionalProperties": False,
                        "properties": {
                            "choices": {
                                "type": "array",
                                "items": {"type": "string"},
                                "minItems": 1,
                                "maxItems": 1,
                            }
                        },
                    }
                }
            },
        },
        {
            "if": {"properties": {"type": {"const": "number"}}},
            "then": {
                "properties": {
                    "value": {
                        "required": ["number"],
                        "additionalProperties": False,
                        "properties": {"number": {"type": "number"}},
                    }
                }
            },
        },
    ],
}
LABEL_STUDIO_TASKS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["data", "predictions"],
        "additionalProperties": False,
        "properties": {
            "data": {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string", "minLength": 1}},
            },
            "predictions": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["result"],
                    "additionalProperties": False,
                    "properties": {
                        "model_version": {"type": "string"},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "result": {"type": "array", "minItems": 1, "items": LABEL_STUDIO_RESULT},
                    },
                },
            },
            "annotations": {"type": "array"},
            "meta": {"type": "object"},
        },
    },
}
ARGILLA_RECORD = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "fields", "suggestions"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "fields": {
            "type": "object",
            "required": ["text"],
            "propertyNames": {"pattern": NAME},
            "additionalProperties": {"type": "string"},
        },
        "metadata": {
            "type": "object",
            "propertyNames": {"pattern": NAME},
            "additionalProperties": {"type": ["string", "number", "boolean", "integer"]},
        },
        "suggestions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["question_name", "value"],
                "additionalProperties": False,
                "properties": {
                    "question_name": {"type": "string", "pattern": NAME},
                    "value": {"type": ["string", "integer"]},
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "agent": {"type": "string"},
                    "type": {"enum": ["model", "human"]},
                },
            },
        },
    },
}


@pytest.fixture(autouse=True)
def shipped_encoder(monkeypatch):
    monkeypatch.setenv("AFFEDGE_MODEL", MODEL)


@pytest.fixture
def reviews(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    return tmp_path


@pytest.fixture(scope="module")
def heads() -> dict:
    from affedge.models import resolve_model

    manifest = resolve_model(MODEL).manifest
    assert manifest is not None
    return manifest.heads


def _valid(schema: dict, instance: object) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, errors


def test_schemas_are_not_vacuous():
    """The schemas reject what Label Studio and Argilla would: they can fail."""
    task = {"data": {"text": "x"}, "predictions": [{"result": [{"id": "1-valence",
            "from_name": "valence", "to_name": "text", "type": "number",
            "value": {"number": 0.5}}]}]}  # fmt: skip
    _valid(LABEL_STUDIO_TASKS, [task])
    validator = jsonschema.Draft202012Validator(LABEL_STUDIO_TASKS)
    broken = json.loads(json.dumps(task))
    broken["predictions"][0]["result"][0]["value"] = {"choices": ["positive"]}
    assert not validator.is_valid([broken])
    broken["predictions"][0]["score"] = 1.5
    assert not validator.is_valid([broken])
    record = {"id": "1", "fields": {"text": "x"}, "suggestions": [{"question_name": "Not Ok",
              "value": "positive"}]}  # fmt: skip
    assert not jsonschema.Draft202012Validator(ARGILLA_RECORD).is_valid(record)


def test_labelstudio_classify(cli, reviews, heads):
    res = cli("classify", "in.txt", "-q", "-f", "labelstudio", "-o", "tasks.json", cwd=reviews)
    assert res.returncode == 0, res.stderr
    tasks = json.loads((reviews / "tasks.json").read_text())
    _valid(LABEL_STUDIO_TASKS, tasks)
    lines = cli("classify", "in.txt", "-q", cwd=reviews).stdout.splitlines()
    plain = [json.loads(line) for line in lines]
    assert [t["data"]["ref_id"] for t in tasks] == IDS
    for task, row in zip(tasks, plain, strict=True):
        assert task["data"]["text"] == row["text"]
        (prediction,) = task["predictions"]
        (result,) = prediction["result"]
        assert prediction["model_version"] == MODEL
        assert result["from_name"] == "sentiment" and result["type"] == "choices"
        assert result["value"]["choices"] == [row["label"]]
        assert set(heads["sentiment"].labels) >= set(result["value"]["choices"])
        assert result["score"] == prediction["score"] == pytest.approx(row["probs"][row["label"]])
        assert task["meta"]["probs"]["sentiment"] == pytest.approx(row["probs"])
    ids = [r["id"] for t in tasks for p in t["predictions"] for r in p["result"]]
    assert len(ids) == len(set(ids))  # "different IDs for each ... result item"


def test_labelstudio_task_all_one_result_per_head(cli, reviews, heads):
    res = cli("classify", "in.txt", "-q", "-t", "all", "-f", "labelstudio", cwd=reviews)
    assert res.returncode == 0, res.stderr
    tasks = json.loads(res.stdout)
    _valid(LABEL_STUDIO_TASKS, tasks)
    classify = {name for name, spec in heads.items() if spec.kind == "classify"}
    numbers = {label for spec in heads.values() if spec.kind != "classify" for label in spec.labels}
    for task in tasks:
        (prediction,) = task["predictions"]
        kinds = {r["from_name"]: r["type"] for r in prediction["result"]}
        assert kinds == {**dict.fromkeys(classify, "choices"), **dict.fromkeys(numbers, "number")}
        confidences = [r["score"] for r in prediction["result"] if r["type"] == "choices"]
        assert prediction["score"] == min(confidences)  # least sure head: reviewed first
        for r in prediction["result"]:
            if r["type"] == "choices":
                assert r["value"]["choices"][0] in heads[r["from_name"]].labels

    scored = cli("score", "in.txt", "-q", "-t", "valence", "-f", "labelstudio", cwd=reviews)
    tasks = json.loads(scored.stdout)
    _valid(LABEL_STUDIO_TASKS, tasks)
    assert all(t["predictions"][0]["result"][0]["type"] == "number" for t in tasks)


def test_argilla_records(cli, reviews, heads):
    args = ["classify", "in.txt", "-q", "-t", "all", "-f", "argilla", "-o", "rec.jsonl"]
    res = cli(*args, cwd=reviews)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in (reviews / "rec.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [str(i) for i in IDS]
    assert [r["fields"]["text"] for r in records] == [t for t in TEXTS if t]
    for record in records:
        _valid(ARGILLA_RECORD, record)
        by_question = {s["question_name"]: s for s in record["suggestions"]}
        for name, spec in heads.items():
            if spec.kind == "classify":
                s = by_question[name.replace(" ", "_")]
                assert s["value"] in spec.labels and s["agent"] == MODEL and s["type"] == "model"
                key = f"{name}-{s['value']}".replace(" ", "_")
                assert s["score"] == pytest.approx(record["metadata"][key])
            else:
                for label in spec.labels:
                    assert by_question[label]["value"] in range(11)  # a 0..10 rating
                    exact = min(max(record["metadata"][label], 0.0), 1.0)
                    assert by_question[label]["value"] == round(10 * exact)

    scored = cli("score", "in.txt", "-q", "-t", "valence", "-f", "argilla", cwd=reviews)
    for line in scored.stdout.splitlines():
        record = json.loads(line)
        _valid(ARGILLA_RECORD, record)
        (s,) = record["suggestions"]
        assert s["question_name"] == "valence" and "score" not in s
