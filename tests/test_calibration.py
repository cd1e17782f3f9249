"""Temperature scaling: the fit, the manifest field, the engines, the CLI and the export step."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from affedge.artifact import Manifest
from affedge.calibration import (
    calibration_key,
    fit_temperature,
    nll,
    recalibrate,
    reliability,
    tempered_softmax,
)
from affedge.engines import open_engine
from affedge.errors import ModelError
from affedge.metrics import ece
from affedge.models import resolve_model
from affedge.records import Record
from affedge.tasks import get_task

TEXTS = [
    "a wonderful, moving film",
    "a dull, boring mess",
    "it was fine I guess",
    "I can't believe they did that to me!",
    "the plot was okay but the acting was awful",
]


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_with(true_t):
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(20_000, 4))
    probs = tempered_softmax(logits, true_t)
    gold = np.array([rng.choice(4, p=p) for p in probs])
    fitted = fit_temperature(logits, gold)
    assert fitted == pytest.approx(true_t, rel=0.06)
    # the fitted temperature is the NLL minimum among its neighbours and beats T = 1
    assert nll(logits, gold, fitted) <= min(nll(logits, gold, fitted * f) for f in (0.9, 1.1))
    assert nll(logits, gold, fitted) <= nll(logits, gold, 1.0)


def test_recalibrating_probabilities_equals_dividing_the_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 4.0, size=(50, 7))
    for t in (0.3, 1.0, 3.0):
        np.testing.assert_allclose(
            recalibrate(tempered_softmax(logits), t), tempered_softmax(logits, t), atol=1e-12
        )
        # the winning label never moves
        assert (recalibrate(tempered_softmax(logits), t).argmax(1) == logits.argmax(1)).all()


def test_over_confident_scores_get_a_temperature_above_one_and_a_lower_ece():
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 2.0, size=(5_000, 3))
    gold = np.array([rng.choice(3, p=p) for p in tempered_softmax(logits)])
    loud = logits * 3.0  # the same ranking, three times too confident
    t = fit_temperature(loud, gold)
    assert t == pytest.approx(3.0, rel=0.1)
    hits = loud.argmax(1) == gold
    before = ece(tempered_softmax(loud).max(1), hits)
    after = ece(tempered_softmax(loud, t).max(1), hits)
    assert after < before / 3
    rows = reliability(tempered_softmax(loud, t).max(1), hits)
    assert sum(n for _, _, n in rows) == len(gold)
    assert all(abs(acc - conf) < 0.1 for conf, acc, n in rows if n > 200)


def test_calibration_keys():
    assert calibration_key("sentiment") == "sentiment"
    assert calibration_key("emotion", ["joy", "anger"]) == "emotion:joy,anger"


@pytest.mark.parametrize(
    "value", ["2", -1.0, 0.0, 1e9, float("nan"), True, [1.0]], ids=lambda v: repr(v)
)
def test_the_manifest_refuses_bad_temperatures(tmp_path, value):
    raw = {"kind": "affedge-encoder-multitask", "calibration": {"sentiment": value}}
    (tmp_path / "affedge.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError) as err:
        Manifest.read(tmp_path)
    assert "calibration" in str(err.value) and "\n" not in str(err.value)


def test_the_manifest_round_trips_temperatures(tmp_path):
    Manifest(kind="affedge-encoder-multitask", calibration={"polarity": 0.75}).write(tmp_path)
    assert Manifest.read(tmp_path).calibration == {"polarity": 0.75}


@pytest.fixture
def calibrated_encoder(tmp_path):
    """A copy of the shipped int8 encoder with hand-set temperatures."""
    folder = tmp_path / "enc"
    shutil.copytree(resolve_model("minilm-affect-int8").folder, folder)
    manifest = Manifest.read(folder)
    manifest.calibration = {"polarity": 2.0, "sentiment": 0.5, "emotion": 3.0}
    manifest.write(folder)
    return folder


def test_encoder_engines_apply_the_manifests_temperatures(calibrated_encoder):
    records = [Record(id=str(i), text=t) for i, t in enumerate(TEXTS)]
    engine = open_engine(str(calibrated_encoder), threads=1)
    try:
        for task_name, t in (("polarity", 2.0), ("sentiment", 0.5)):
            task = get_task(task_name)
            cal = list(engine.classify(records, task))
            engine.calibrate = False
            raw = list(engine.classify(records, task))
            engine.calibrate = True
            for c, r in zip(cal, raw, strict=True):
                assert c.label == r.label
                np.testing.assert_allclose(
                    list(c.probs.values()), recalibrate(np.array(list(r.probs.values())), t), 1e-9
                )
            assert any(
                abs(c.probs[c.label] - r.probs[r.label]) > 0.01
                for c, r in zip(cal, raw, strict=True)
            )
        # a label subset has its own key: no temperature fitted for it, raw probabilities
        task = get_task("sentiment")
        subset = ["positive", "negative"]
        engine.calibrate = False
        raw_subset = [r.probs for r in engine.classify(records, task, subset)]
        engine.calibrate = True
        assert [r.probs for r in engine.classify(records, task, subset)] == raw_subset
        # every head at once uses the head's own temperature
        engine.calibrate = False
        raw_all = list(engine.analyze(records))
        engine.calibrate = True
        for c, r in zip(engine.analyze(records), raw_all, strict=True):
            got = np.array(list(c["emotion"]["probs"].values()))
            want = recalibrate(np.array(list(r["emotion"]["probs"].values())), 3.0)
            np.testing.assert_allclose(got, want, atol=1e-9)
            assert c["emotion"]["label"] == r["emotion"]["label"]
    finally:
        engine.close()


def test_cli_no_calibration_shows_the_raw_probabilities(cli, calibrated_encoder, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    common = ("classify", src, "-m", calibrated_encoder, "--task", "polarity", "--threads", "1")
    cal, raw = cli(*common), cli(*common, "--no-calibration")
    assert cal.returncode == raw.returncode == 0, cal.stderr + raw.stderr
    cal_rows = [json.loads(line) for line in cal.stdout.splitlines()]
    raw_rows = [json.loads(line) for line in raw.stdout.splitlines()]
    for c, r in zip(cal_rows, raw_rows, strict=True):
        assert c["label"] == r["label"]
        want = recalibrate(np.array([r["probs"][k] for k in c["probs"]]), 2.0)
        np.testing.assert_allclose([c["probs"][k] for k in c["probs"]], want, atol=1e-6)


def test_export_calibrate_fits_on_validation_and_writes_the_manifest(
    cli, data_dir, calibrated_encoder
):
    res = cli("export", "calibrate", calibrated_encoder, "--limit", "60", "--threads", "1")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    manifest = Manifest.read(calibrated_encoder)
    assert manifest.calibration == report["temperatures"]
    assert {"polarity", "sentiment", "emotion", "sarcasm"} <= set(manifest.calibration)
    assert "emotion/emorynlp" not in report["benchmarks"]  # labels the head does not have
    stored = manifest.info["calibration_report"]
    assert stored["split"] == "validation" and stored["limit"] == 60
    for row in report["benchmarks"].values():
        assert 0.05 <= row["temperature"] <= 20 and 0 < row["n"] <= 60
        assert math.isfinite(row["ece_before"]) and math.isfinite(row["ece_after"])
    # the engine now answers with the fitted temperatures
    engine = open_engine(str(calibrated_encoder), threads=1)
    try:
        assert engine.temperature(get_task("polarity")) == manifest.calibration["polarity"]
    finally:
        engine.close()


def test_export_calibrate_refuses_a_folder_without_a_manifest(cli, tmp_path):
    res = cli("export", "calibrate", tmp_path)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_gguf_artifacts_apply_their_temperatures(tmp_path, smollm2_path):
    """A GGUF artifact folder's manifest temperatures reach the llama.cpp engine's label
    probabilities; labels do not move."""
    folder = tmp_path / "gguf"
    folder.mkdir()
    shutil.copyfile(smollm2_path, folder / "model.gguf")  # (symlinks out are refused)
    Manifest(kind="affedge-llm-gguf", file="model.gguf", calibration={"polarity": 3.0}).write(
        folder
    )
    records = [Record(id=str(i), text=t) for i, t in enumerate(TEXTS)]
    engine = open_engine(str(folder), threads=1)
    try:
        task = get_task("polarity")
        cal = list(engine.classify(records, task))
        engine.calibrate = False
        raw = list(engine.classify(records, task))
    finally:
        engine.close()
    for c, r in zip(cal, raw, strict=True):
        assert c.label == r.label
        want = recalibrate(np.array(list(r.probs.values())), 3.0)
        np.testing.assert_allclose(list(c.probs.values()), want, atol=1e-9)
