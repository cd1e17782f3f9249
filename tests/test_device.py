"""--device auto|cpu|cuda and --gpu-layers (affedge/device.py, engines/ort.py).

On a machine without a usable GPU (CI, this one): ``auto`` runs on the CPU and gives exactly
the CPU's records; ``cuda`` is one line on stderr and exit status 2, nothing written. Where
onnxruntime has a CUDA execution provider and a GPU, the GPU tests run instead.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from affedge.annotate import as_records
from affedge.device import check_device, llama_gpu_layers
from affedge.engines import open_engine
from affedge.engines.ort import CUDA_PROVIDER, providers_for
from affedge.errors import ModelError
from affedge.tasks import TASKS

ort = pytest.importorskip("onnxruntime")
ORT_CUDA = CUDA_PROVIDER in ort.get_available_providers()
needs_no_cuda = pytest.mark.skipif(ORT_CUDA, reason="onnxruntime has a CUDA provider here")
SMOLLM2 = "smollm2-135m-instruct"
TEXTS = "What a wonderful film.\nThe food arrived cold.\nIt is Tuesday.\n"


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("affedge: error: "), result.stderr
    return lines[0]


def test_device_names_and_gpu_layers_are_checked():
    assert [check_device(d) for d in ("auto", "CPU", " cuda ")] == ["auto", "cpu", "cuda"]
    with pytest.raises(ModelError, match="one of auto, cpu, cuda"):
        check_device("tpu")
    with pytest.raises(ModelError, match="not with --device cpu"):
        check_device("cpu", 4)
    with pytest.raises(ModelError, match="-1 for all"):
        check_device("auto", -2)
    assert check_device("cpu", 0) == "cpu"


@needs_no_cuda
def test_auto_falls_back_to_the_cpu_with_the_same_records(cli, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXTS)
    assert providers_for("auto") == ["CPUExecutionProvider"]
    with open_engine(None, threads=1, device="auto") as engine:
        assert engine.device == "cpu"
    auto = cli("classify", src, "--task", "all", "--device", "auto", "-q")
    cpu = cli("classify", src, "--task", "all", "--device", "cpu", "-q")
    assert auto.returncode == 0 and auto.stderr == "", auto.stderr
    assert auto.stdout == cpu.stdout and len(auto.stdout.splitlines()) == 3


@needs_no_cuda
def test_cuda_without_a_cuda_provider_is_one_line_and_exit_2(cli, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXTS)
    out = tmp_path / "out.jsonl"
    line = _one_error_line(cli("classify", src, "--device", "cuda", "-o", out))
    assert "--device cuda" in line and "affedge[gpu]" in line
    assert not out.exists() and not list(tmp_path.glob("out*"))
    line = _one_error_line(cli("score", src, "--task", "valence", "--device", "cuda"))
    assert "no CUDA execution provider" in line
    with pytest.raises(ModelError, match="no CUDA execution provider"):
        providers_for("cuda")


def test_cpu_only_backends_and_gguf_options_are_refused(cli, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(TEXTS)
    line = _one_error_line(cli("classify", src, "-m", "minilm-affect-static", "--device", "cuda"))
    assert "CPU only" in line
    line = _one_error_line(cli("classify", src, "--gpu-layers", "4"))
    assert "--gpu-layers" in line and "not llama.cpp" in line
    line = _one_error_line(cli("classify", src, "--device", "cpu", "--gpu-layers", "4"))
    assert "not with --device cpu" in line
    line = _one_error_line(cli("classify", src, "--ray", "--device", "cuda"))
    assert "--ray" in line


def test_gguf_cuda_needs_a_gpu_build_and_auto_stays_on_the_cpu(cli, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp can offload to a GPU")
    assert llama_gpu_layers("auto", None) == 0 and llama_gpu_layers("auto", 8) == 0
    with pytest.raises(ModelError, match="cannot offload"):
        llama_gpu_layers("cuda", None)
    src = tmp_path / "in.txt"
    src.write_text(TEXTS)
    line = _one_error_line(cli("negotiate", src, "-m", SMOLLM2, "--device", "cuda"))
    assert "GGML_CUDA=on" in line
    with open_engine(SMOLLM2, threads=1, device="auto", gpu_layers=8) as engine:
        assert engine.gpu_layers == 0 and engine.device == "cpu"
        results = list(engine.classify(as_records(TEXTS.splitlines()), TASKS["polarity"]))
    assert len(results) == 3 and all(abs(sum(r.probs.values()) - 1) < 1e-6 for r in results)


@pytest.mark.skipif(not ORT_CUDA, reason="no CUDA execution provider in this onnxruntime")
def test_cuda_runs_the_encoder_on_the_gpu_with_the_cpus_labels():
    recs = list(as_records(TEXTS.splitlines() * 20))
    with open_engine(None, threads=1, device="cpu") as cpu:
        expected = [r.probs for r in cpu.classify(recs, TASKS["sentiment"])]
    try:
        gpu = open_engine(None, threads=1, device="cuda")
    except ModelError as exc:  # a CUDA provider but no GPU: the one-line error, nothing else
        assert "--device cuda" in str(exc)
        pytest.skip(str(exc))
    with gpu:
        assert gpu.device == "cuda"
        got = [r.probs for r in gpu.classify(recs, TASKS["sentiment"])]
    a = np.array([list(p.values()) for p in expected])
    b = np.array([list(p.values()) for p in got])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(a, b, atol=0.05)
    json.dumps(got)  # plain floats
