"""Data-parallel training (train/distributed.py): slices add up to the single-process step,
and a real 2-process gloo run (``--processes 2``, accelerate's launcher) follows the
single-process loss trajectory.

Tolerance of the 2-process comparison: relative 1e-4 on every logged loss, 1e-5 absolute on
the adapter weights. With dropout off the two runs compute the same step up to float
summation order (two fp32 partial sums added instead of one sum, ~1e-7 relative); rounding
then compounds over a few Adam steps, whose update divides by sqrt(v) and so amplifies tiny
gradient differences on near-zero entries, hence the margin. What each test catches: the
2-process run catches wrong sharding or missing sync (a rank training on the whole batch
doubles the logged loss and tokens; unsynchronised ranks diverge and ``check_replicas``
fails the run). It does not resolve a wrong per-slice weighting (slices weighted by examples
instead of answer tokens passed it when tried: a random model's token losses are all near
log(vocab)); the in-process tests below do, at 1e-5 relative against a 3e-4 error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from affedge.train.distributed import World, without_option  # noqa: E402
from affedge.train.lora import (  # noqa: E402
    LoraSettings,
    add_lora,
    causal_lm_loss,
    load_base,
)
from affedge.train.multitask import Objective  # noqa: E402
from affedge.train.sft_data import ChatFormat, build_examples, collate, find_source  # noqa: E402

CPU = torch.device("cpu")


def test_shards_partition_the_batch_in_order():
    batch = list(range(7))
    for size in (1, 2, 3, 7):
        slices = [World(rank, size).shard(batch) for rank in range(size)]
        assert [x for s in slices for x in s] == batch
        assert max(map(len, slices)) - min(map(len, slices)) <= 1
    with pytest.raises(Exception, match="smaller than the 3 processes"):
        World(0, 3).check_batch(2)
    assert without_option(
        ["train", "x", "--processes", "2", "--processes=3", "-o", "o"], ("--processes")
    ) == ["train", "x", "-o", "o"]


@pytest.fixture(scope="module")
def llm(tiny_llama, smollm2_hf, data_dir):
    from transformers import AutoConfig, AutoTokenizer

    from affedge.datasets import load_dataset

    config = AutoConfig.from_pretrained(smollm2_hf)
    fmt = ChatFormat(AutoTokenizer.from_pretrained(smollm2_hf), config.eos_token_id)
    examples = []
    for name, task in (
        ("tweet_eval_sentiment", "sentiment"),
        ("meld", "emotion"),
        ("semeval2018_v_reg", "valence"),
    ):
        source = find_source(name, task=task)
        records = load_dataset(name, "validation", root=data_dir, limit=2)
        examples += build_examples(fmt, source, records, 192)[0]
    model, _ = load_base(tiny_llama, "none", CPU)
    peft_model = add_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.0), 0)
    with torch.no_grad():  # B starts at zero: give the adapter a non-trivial gradient path
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return peft_model, fmt, examples


def _grads(modules, loss_of):
    """(loss, gradients) of ``loss_of()`` over the trainable parameters of ``modules``."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    loss, logs = loss_of()
    loss.backward()
    return (
        float(loss.detach()),
        logs,
        [p.grad.clone() if p.grad is not None else None for p in params],
    )


def _check_slices_add_up(modules, loss_fn, model, examples, pad_id):
    """Two ranks' contributions add up to the one-process loss, logs and gradients; the
    slices' own means (no global weighting) do not."""
    batch = collate(examples, pad_id)
    loss, logs, grads = _grads(modules, lambda: loss_fn(model, batch, examples))
    total, total_logs, summed = 0.0, {}, None
    own_means = 0.0
    for rank in range(2):
        part = World(rank, 2).shard(examples)
        pb = collate(part, pad_id)
        value, plogs, g = _grads(modules, lambda p=part, b=pb: loss_fn(model, b, p, whole=examples))
        total += value
        for k, v in plogs.items():
            total_logs[k] = total_logs.get(k, 0.0) + v
        summed = g if summed is None else [a + b for a, b in zip(summed, g, strict=True)]
        with torch.no_grad():
            own_means += float(loss_fn(model, pb, part)[0]) / 2
    assert total == pytest.approx(loss, rel=1e-5)
    assert total_logs.keys() == logs.keys()
    for k in logs:
        assert total_logs[k] == pytest.approx(logs[k], rel=1e-5, abs=1e-7), k
    for a, b in zip(summed, grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # The check can fail: averaging the slices' own means is a different loss here, ten
    # times farther from the global loss than the tolerance above (a random model's token
    # losses are all near log(vocab), so the difference is small but well resolved).
    assert abs(own_means - loss) > 1e-4 * abs(loss)


def test_causal_lm_slices_add_up_to_the_global_step(llm):
    peft_model, fmt, examples = llm
    # uneven slices (3 + 4 examples) with different answer-token counts
    batch = examples[:5] + examples[-2:]
    _check_slices_add_up([peft_model], causal_lm_loss, peft_model, batch, fmt.eot_id)


@pytest.mark.parametrize("tawl,dawl,gamma", [(True, True, 2.0), (False, False, 0.0)])
def test_multitask_objective_slices_add_up_to_the_global_step(llm, tawl, dawl, gamma):
    peft_model, fmt, examples = llm
    tasks = sorted({ex.task for ex in examples})
    objective = Objective(tasks, peft_model.config.hidden_size, tawl, dawl, gamma)
    with torch.no_grad():  # non-trivial T-AWL / D-AWL weights
        objective.task_weights.log_vars.normal_(0, 0.5)
        objective.confidence.weight.normal_(0, 0.1)
    # tasks unevenly spread: rank 0 sees sentiment + emotion, rank 1 emotion + valence
    _check_slices_add_up(
        [peft_model, objective], objective.loss_fn, peft_model, examples, fmt.eot_id
    )


def test_encoder_slices_add_up_to_the_global_step(data_dir, tiny_bert):
    import random

    from affedge.encoding import EncoderTokenizer
    from affedge.tasks import HEADS
    from affedge.train.encoder import EncoderConfig, MixedSampler, _step_loss, _tensors
    from affedge.train.encoder_data import build_examples as encoder_examples
    from affedge.train.encoder_model import load_encoder
    from affedge.train.losses import TaskWeights

    model, _ = load_encoder(tiny_bert)
    model.eval()  # no dropout: the slices must reproduce the one-process loss exactly
    cfg = EncoderConfig(max_length=48, pad_chunk=0)
    weights = TaskWeights(list(HEADS))
    with torch.no_grad():
        weights.log_vars.normal_(0, 0.5)
    sources = encoder_examples(
        "validation", data_dir, ["sst2", "tweet_eval_irony", "semeval2018_v_reg"]
    )
    batch = MixedSampler(sources, 0.5, random.Random(1)).batch(9)
    tok = EncoderTokenizer(tiny_bert / "tokenizer.json", 48)
    modules = [model, weights]

    def loss_of(part, whole=None):
        return _step_loss(model, weights, part, _tensors(tok, part, 3, CPU), cfg, CPU, whole)

    loss, raw, grads = _grads(modules, lambda: loss_of(batch))
    total, raw_sum, summed = 0.0, {}, None
    for rank in range(2):
        part = World(rank, 2).shard(batch)
        value, r, g = _grads(modules, lambda p=part: loss_of(p, batch))
        total += value
        for k, v in r.items():
            raw_sum[k] = raw_sum.get(k, 0.0) + v
        summed = (
            g
            if summed is None
            else [
                a if b is None else b if a is None else a + b
                for a, b in zip(summed, g, strict=True)
            ]
        )
    assert total == pytest.approx(loss, rel=1e-5)
    assert raw_sum == pytest.approx(raw, rel=1e-5)
    assert [a is None for a in summed] == [b is None for b in grads]
    for a, b in zip(summed, grads, strict=True):
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ a real 2-process run


def _progressive_options(tiny_llama: Path, data_dir: Path) -> dict[str, str]:
    return {
        "base": str(tiny_llama),
        "quant": "none",
        "rank": "4",
        "alpha": "8",
        "dropout": "0",  # dropout masks cannot match across process counts
        "stages": "sa",
        "lr": "1e-2",
        "steps": "4",
        "batch-size": "3",  # slices of 1 and 2 examples: token weighting matters
        "max-length": "192",
        "limit": "8",
        "eval-limit": "2",
        "seed": "3",
        "log-every": "1",
        "save-every": "2",
        "threads": "1",
        "data-dir": str(data_dir),
    }


def test_two_processes_follow_the_single_process_trajectory(cli, tiny_llama, data_dir, tmp_path):
    from safetensors.torch import load_file

    from affedge.train.progressive import ProgressiveConfig, train_progressive

    options = _progressive_options(tiny_llama, data_dir)
    one = tmp_path / "one"
    cfg = ProgressiveConfig(
        base=str(tiny_llama),
        quant="none",
        rank=4,
        alpha=8,
        dropout=0.0,
        stages=["sa"],
        lr={"sa": 1e-2},
        steps=4,
        batch_size=3,
        max_length=192,
        limit=8,
        eval_limit=2,
        seed=3,
        log_every=1,
        save_every=2,
        threads=1,
        data_dir=str(data_dir),
    )
    single = train_progressive(cfg, one, log=lambda _: None)

    two = tmp_path / "two"
    args = [f"--{k}={v}" for k, v in options.items()]
    result = cli("train", "progressive", *args, "--out", str(two), "--processes", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # printed once, by the main process
    assert summary["out"] == str(two)
    assert result.stderr.count("stage sa: step 4/4") == 1  # logged once

    manifest = json.loads((two / "affedge.json").read_text())
    got = [h["loss"] for h in manifest["stages"][0]["history"]]
    want = [h["loss"] for h in single["stages"][0]["history"]]
    print(f"losses, 1 process: {want}; 2 processes: {got}")
    assert len(got) == len(want) == 4
    assert got == pytest.approx(want, rel=1e-4)
    assert manifest["stages"][0]["tokens"] == single["stages"][0]["tokens"]
    a = load_file(one / "stages" / "sa" / "adapter.safetensors")
    b = load_file(two / "stages" / "sa" / "adapter.safetensors")
    assert a.keys() == b.keys()
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
    assert moved > 1e-3  # the adapter trained
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
