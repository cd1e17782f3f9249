"""The shape the toolkit promises: the artifact contract, the backend registry, the thin CLI.

A test-only backend and artifact kind go in through the public registry (as a plugin
package's would), and the runtime path is probed for what it imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest

import affedge
from affedge.artifact import (
    MANIFEST_NAME,
    ArtifactKind,
    HeadSpec,
    Manifest,
)
from affedge.engines import (
    Backend,
    Capability,
    Engine,
    LabelResult,
    ScoreResult,
    open_engine,
    register_backend,
)
from affedge.engines import unregister_backend as _unregister
from affedge.errors import ModelError
from affedge.models import ModelRef, resolve_model
from affedge.records import Record
from affedge.tasks import Task

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ artifact contract


def test_manifest_round_trip_keeps_runtime_fields_and_the_record(tmp_path):
    manifest = Manifest(
        kind=ArtifactKind.ENCODER_ONNX.value,
        file="model.onnx",
        heads={"sentiment": HeadSpec("classify", ("negative", "positive"))},
        max_length=64,
        context_turns=3,
        info={"validation": {"sst2": 0.9}, "export": {"agreement": 0.97}},
    )
    manifest.write(tmp_path)
    back = Manifest.read(tmp_path)
    assert back == manifest
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["validation"] == {"sst2": 0.9}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "not a JSON object"),
        ({}, "field 'kind' is missing"),
        ({"kind": 3}, "field 'kind' must be a non-empty string"),
        ({"kind": "x", "file": "../outside.onnx"}, "must name a file inside the model folder"),
        ({"kind": "x", "file": "/etc/passwd"}, "must name a file inside the model folder"),
        ({"kind": "x", "max_length": -1}, "'max_length' must be an integer"),
        ({"kind": "x", "max_length": True}, "'max_length' must be an integer"),
        ({"kind": "x", "heads": {"h": {"kind": "rank", "labels": []}}}, "head 'h' needs a kind"),
        ({"kind": "x", "heads": {"h": {"kind": "classify", "labels": [1]}}}, "list of strings"),
        ({"kind": "x", "labels": {"sentiment": "pos"}}, "list of strings"),
    ],
)
def test_invalid_manifests_are_one_clear_error(tmp_path, data, message):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message) as err:
        Manifest.read(tmp_path)
    assert str(tmp_path / MANIFEST_NAME) in str(err.value) and "\n" not in str(err.value)


def test_unreadable_and_oversized_manifests(tmp_path, monkeypatch):
    (tmp_path / MANIFEST_NAME).write_bytes(b"{\xff")
    with pytest.raises(ModelError, match="unreadable manifest"):
        Manifest.read(tmp_path)
    import affedge.artifact

    monkeypatch.setattr(affedge.artifact, "MAX_MANIFEST_BYTES", 10)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"kind": "x", "note": "x" * 20}))
    with pytest.raises(ModelError, match="larger than allowed"):
        Manifest.read(tmp_path)


def test_the_exported_encoder_keeps_its_on_disk_form(tmp_path):
    """Read by every affedge version: the training kind plus an ``onnx`` section."""
    legacy = {
        "kind": "affedge-encoder-multitask",
        "heads": {"sarcasm": {"kind": "classify", "labels": ["not sarcastic", "sarcastic"]}},
        "max_length": 80,
        "context_turns": 3,
        "onnx": {"file": "model.int8.onnx", "opset": 17},
    }
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(legacy))
    manifest = Manifest.read(tmp_path)
    assert manifest.kind == ArtifactKind.ENCODER_ONNX.value
    assert manifest.file == "model.int8.onnx" and manifest.info["onnx"] == {"opset": 17}
    (tmp_path / "again").mkdir()
    manifest.write(tmp_path / "again")
    assert json.loads((tmp_path / "again" / MANIFEST_NAME).read_text()) == legacy


def test_resolution_decides_the_kind_once():
    ref = resolve_model("minilm-affect-int8")
    assert ref.kind == ArtifactKind.ENCODER_ONNX.value and ref.manifest is not None
    assert ref.path == ref.folder and ref.folder.name == "minilm-affect-int8"
    assert ref.manifest.model_file(ref.folder).suffix == ".onnx"


def test_a_manifest_naming_a_missing_file_is_refused(tmp_path):
    Manifest(ArtifactKind.LLM_ONNX.value, file="model.onnx").write(tmp_path)
    with pytest.raises(ModelError, match=r"model\.onnx, which is missing"):
        resolve_model(tmp_path)


# ------------------------------------------------------------------- backend registry

TEST_KIND = "test-keyword-lexicon"


class KeywordEngine(Engine):
    """A test-only backend: positive if the text holds a word of the manifest's list."""

    capabilities = frozenset({Capability.LABELS, Capability.SCORES})

    def __init__(self, ref: ModelRef, threads: int | None = None) -> None:
        assert ref.manifest is not None
        self.name = ref.name
        self.words = set(ref.manifest.info["positive_words"])

    def _positive(self, record: Record) -> float:
        return 0.9 if set(record.text.lower().split()) & self.words else 0.1

    def classify(
        self, records: Iterable[Record], task: Task, labels: Sequence[str] | None = None
    ) -> Iterator[LabelResult]:
        for record in records:
            p = self._positive(record)
            yield LabelResult({"positive": p, "negative": 1 - p})

    def score(self, records: Iterable[Record], task: Task) -> Iterator[ScoreResult]:
        for record in records:
            yield ScoreResult(self._positive(record))


@pytest.fixture
def keyword_model(tmp_path):
    register_backend(Backend("keyword", (TEST_KIND,), KeywordEngine))
    folder = tmp_path / "keywords"
    folder.mkdir()
    Manifest(TEST_KIND, info={"positive_words": ["great", "love"]}).write(folder)
    yield folder
    _unregister("keyword")


def test_a_registered_backend_opens_its_kind_through_the_public_api(keyword_model):
    with affedge.load(str(keyword_model)) as model:
        labels = [r.label for r in model.classify(["I love it", "meh"], task="polarity")]
        assert labels == ["positive", "negative"]
        rows = list(model.annotate(["great stuff"], task="polarity"))
    assert rows[0]["label"] == "positive" and rows[0]["model"] == "keywords"


def test_capabilities_are_checked_not_guessed(keyword_model):
    with open_engine(str(keyword_model)) as engine:
        assert not engine.supports(Capability.CHAT)
    with affedge.load(str(keyword_model)) as model, pytest.raises(ModelError, match="generative"):
        model.negotiate(["great"], task="sentiment")
    with affedge.load(str(keyword_model)) as model, pytest.raises(ModelError, match="multi-head"):
        model.classify(["great"], task="all")


def test_an_unknown_kind_names_what_this_install_opens(tmp_path):
    Manifest("someone-elses-kind").write(tmp_path)
    with pytest.raises(ModelError, match="no backend opens 'someone-elses-kind'"):
        open_engine(str(tmp_path))


def test_the_api_gains_every_head_and_file_runs(tmp_path):
    with affedge.load() as model:
        (row,) = model.classify(["What a wonderful film."], task="all")
    assert row["sentiment"]["label"] == "positive" and 0.0 <= row["valence"] <= 1.0
    src = tmp_path / "in.txt"
    src.write_text("What a wonderful film.\nAwful.\n")
    summary = affedge.annotate_file(str(src), affedge.Job(task="all"), output=tmp_path / "o.jsonl")
    assert summary.processed == 2
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and rows[1]["sentiment"]["label"] == "negative"


# ------------------------------------------------------------------------- thin CLI

PROBE = """
import sys
import affedge.cli
sys.argv = ["affedge", "classify", sys.argv[1], "-q", "--task", "all"]
try:
    affedge.cli.main()
except SystemExit:
    pass
prefixes = ("affedge.train", "affedge.export", "affedge.bench", "torch", "transformers", "peft",
            "ray", "affedge.ray_data")
print("LOADED", sorted(m for m in sys.modules if m.startswith(prefixes)))
"""


def test_classify_imports_nothing_from_train_export_or_bench():
    reviews = REPO / "examples" / "reviews.txt"
    res = subprocess.run(
        [sys.executable, "-c", PROBE, str(reviews)], capture_output=True, text=True
    )
    assert '"sentiment"' in res.stdout, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "LOADED []"


def test_plugin_commands_are_mounted_from_entry_points():
    res = subprocess.run(
        [sys.executable, "-m", "affedge.cli", "--help"], capture_output=True, text=True
    )
    for command in ("classify", "score", "negotiate", "train", "export", "eval", "bench"):
        assert command in res.stdout, res.stdout


def test_no_runtime_module_over_500_lines():
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text().splitlines())
        for p in (REPO / "affedge").rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > 500} == {}


def test_a_backend_without_its_extra_names_the_extra(tmp_path):
    """The light core install has no llama.cpp: GGUF features say which extra to install."""
    from affedge.engines import backend_for

    assert backend_for(ArtifactKind.LLM_GGUF.value).extra == "llm"
    register_backend(
        Backend("needs-x", ("test-needs-x",), KeywordEngine, extra="x", requires=("no_such_mod",))
    )
    try:
        Manifest("test-needs-x", info={"positive_words": []}).write(tmp_path)
        with pytest.raises(ModelError, match=r"needs no_such_mod: pip install 'affedge\[x\]'"):
            open_engine(str(tmp_path))
    finally:
        _unregister("needs-x")
