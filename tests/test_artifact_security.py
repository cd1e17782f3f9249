"""Untrusted artifacts (issue 15, item 4): no pickle on any load path, hostile manifests and
chat templates refused with one line, training checkpoints as safetensors + JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from affedge.artifact import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from affedge.chat_template import MAX_RENDERED_CHARS, ChatTemplate
from affedge.errors import AffedgeError, ModelError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "affedge" / "assets" / "minilm-affect-int8"


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert len(message.splitlines()) == 1, message
    return message


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "affedge.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=600,
    )  # fmt: skip


# ------------------------------------------------------------------ no pickle


def test_no_load_path_can_unpickle() -> None:
    """torch.load, pickle, joblib and np.load(allow_pickle=True) run code from the file."""
    risky = re.compile(
        r"torch\.load\(|pickle\.loads?\(|joblib\.load|dill\.|weights_only\s*=\s*False"
        r"|allow_pickle\s*=\s*True|import pickle|from pickle"
    )
    found, np_loads = [], []
    for folder in ("affedge", "train", "export", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for number, line in enumerate(text.splitlines(), 1):
                if risky.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
                if "np.load(" in line and "allow_pickle=False" not in line:
                    np_loads.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == [] and np_loads == []


# ------------------------------------------------------------------ manifests


HOSTILE_MANIFESTS = {
    "traversal": {"kind": "affedge-llm-onnx", "file": "../../etc/passwd"},
    "absolute": {"kind": "affedge-llm-onnx", "file": "/etc/passwd"},
    "parent": {"kind": "affedge-llm-onnx", "file": ".."},
    "subfolder": {"kind": "affedge-llm-onnx", "file": "sub/model.onnx"},
    "backslash": {"kind": "affedge-llm-onnx", "file": "..\\..\\model.onnx"},
    "file_type": {"kind": "affedge-llm-onnx", "file": ["model.onnx"]},
    "no_kind": {"file": "model.onnx"},
    "kind_type": {"kind": {"x": 1}},
    "heads_type": {"kind": "affedge-encoder-onnx", "heads": ["sentiment"]},
    "head_kind": {"kind": "affedge-encoder-onnx", "heads": {"s": {"kind": "eval", "labels": []}}},
    "head_labels": {"kind": "affedge-encoder-onnx", "heads": {"s": {"kind": "classify",
                                                                   "labels": "abc"}}},
    "too_many_labels": {"kind": "affedge-llm", "labels": {"t": ["x"] * 100_001}},
    "max_length": {"kind": "affedge-encoder-onnx", "max_length": 10**12},
    "max_length_type": {"kind": "affedge-encoder-onnx", "max_length": "80"},
    "bool_int": {"kind": "affedge-encoder-onnx", "context_turns": True},
    "n_ctx": {"kind": "affedge-llm-onnx", "n_ctx": -1},
    "special_tokens": {"kind": "affedge-llm-onnx", "special_tokens": ["<s>"]},
    "template_type": {"kind": "affedge-llm-onnx", "chat_template": 42},
    "calibration": {"kind": "affedge-encoder-onnx", "calibration": {"sentiment": 1e9}},
    "not_an_object": [1, 2, 3],
}  # fmt: skip
HOSTILE_BYTES = {
    "deep_nesting": b'{"kind": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "huge_number": b'{"kind": "affedge-llm", "x": ' + b"9" * 5000 + b"}",
    "bad_utf8": b'{"kind": "\xff\xfe"}',
    "not_json": b"kind = 'affedge-llm'",
    "empty": b"",
}


@pytest.mark.parametrize("name", [*HOSTILE_MANIFESTS, *HOSTILE_BYTES])
def test_hostile_manifest_is_refused_with_one_line(tmp_path: Path, name: str) -> None:
    data = HOSTILE_BYTES.get(name) or json.dumps(HOSTILE_MANIFESTS.get(name)).encode()
    (tmp_path / MANIFEST_NAME).write_bytes(data)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ModelError) as caught:
        Manifest.read(tmp_path).model_file(tmp_path)
    assert _one_line(caught.value).startswith(str(tmp_path))


def test_a_manifest_larger_than_allowed_is_not_read(tmp_path: Path) -> None:
    with (tmp_path / MANIFEST_NAME).open("wb") as fh:
        fh.truncate(MAX_MANIFEST_BYTES + 1)  # sparse: nothing is written, nothing is read
    with pytest.raises(ModelError, match="larger than allowed") as caught:
        Manifest.read(tmp_path)
    _one_line(caught.value)


def test_a_model_file_linked_outside_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    secret = tmp_path / "secret.onnx"
    secret.write_bytes((folder / "model.int8.onnx").read_bytes()[:64])
    (folder / "model.int8.onnx").unlink()
    (folder / "model.int8.onnx").symlink_to(secret)
    with pytest.raises(ModelError, match="leads outside the folder"):
        Manifest.read(folder).model_file(folder)
    (tmp_path / "in.txt").write_text("fine\n")
    res = _cli("classify", "in.txt", "-m", str(folder), "-q", cwd=tmp_path)
    assert res.returncode == 2 and "leads outside the folder" in res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr


def test_hostile_manifest_through_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    (folder / MANIFEST_NAME).write_bytes(HOSTILE_BYTES["deep_nesting"])
    (tmp_path / "in.txt").write_text("fine\n")
    res = _cli("classify", "in.txt", "-m", str(folder), "-q", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("affedge: error: ") and len(res.stderr.splitlines()) == 1


# ------------------------------------------------------------------ chat templates


MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]


def _escape(marker: Path) -> dict[str, str]:
    """Templates that try to run ``touch marker`` or to use up the machine."""
    cmd = f"touch {marker}"
    return {
        "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "globals": f"{{{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        "self": f"{{{{ self.__init__.__globals__['os'].system('{cmd}') }}}}",
        "namespace": f"{{{{ namespace.__init__.__globals__['os'].system('{cmd}') }}}}",
        "attr_filter": f"{{{{ (lipsum|attr('__globals__'))['os'].system('{cmd}') }}}}",
        "format": "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
        "mutate": "{% set x = messages.append({'role': 'user'}) %}{{ messages }}",
        "range": "{% for i in range(10**9) %}x{% endfor %}",
        "repeat": "{{ 'x' * 10**10 }}",
        "power": "{{ 2 ** 100000000 }}",
        "long_output": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
        "syntax": "{% for m in messages %}{{ m.content }",
        "type_error": "{{ messages + 1 }}",
        "raises": "{{ raise_exception('refused by the template') }}",
    }


@pytest.mark.parametrize("name", list(_escape(Path("x"))))
def test_hostile_chat_template_is_refused_with_one_line(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "escaped"
    source = _escape(marker)[name]
    with pytest.raises(ModelError, match="chat template error") as caught:
        ChatTemplate(source, "<s>", "</s>").render(MESSAGES)
    _one_line(caught.value)
    assert not marker.exists()


def test_a_normal_chat_template_still_renders() -> None:
    source = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text = ChatTemplate(source).render(MESSAGES)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert len(ChatTemplate("{{ 'x' * 1000 }}").render(MESSAGES)) == 1000 < MAX_RENDERED_CHARS


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",  # runs at render
        "{% for m in messages %}{{ m.content }",  # llama-cpp-python compiles it at load
    ],
    ids=["escape", "syntax"],
)
def test_gguf_with_a_hostile_chat_template(tmp_path: Path, smollm2_path: Path, template: str):
    """A real GGUF whose metadata carries the template: one line, exit 2, nothing run."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs the gguf and llama-cpp-python packages (export extra)")
    marker = tmp_path / "escaped"
    hostile = tmp_path / "hostile.gguf"
    write = subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--chat-template",
         template.replace("MARKER", str(marker)), str(smollm2_path), str(hostile)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert write.returncode == 0, write.stderr[-500:]
    (tmp_path / "in.txt").write_text("fine\n")
    res = _cli("classify", "in.txt", "-m", str(hostile), "--threads", "1", "-q", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(res.stderr.splitlines()) == 1 and "chat template" in res.stderr, res.stderr
    assert not marker.exists()


# ------------------------------------------------------------------ checkpoints


def _tiny_run(seed: int):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": 0.1, "base_lr": 0.1}])
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return torch, model, opt


def test_lora_checkpoint_is_safetensors_and_json_and_round_trips(tmp_path: Path) -> None:
    torch, model, opt = _tiny_run(0)
    from affedge.train.lora import LoopResult, load_checkpoint, save_checkpoint

    result = LoopResult(steps=4, seconds=1.5, tokens=12, history=[{"step": 1, "loss": 0.5}])
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, 1, {"model": model}, opt, result)
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"]
    json.loads((folder / "state.json").read_text())
    expected_draw = torch.rand(3)  # what the RNG gives next after the save

    torch.manual_seed(99)
    _, other, other_opt = _tiny_run(1)
    back = LoopResult(steps=4, seconds=0.0, tokens=0)
    assert load_checkpoint(folder, {"model": other}, other_opt, back) == 1
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)
    a, b = opt.state_dict(), other_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key]))
    assert (back.tokens, back.seconds, back.history) == (12, 1.5, result.history)
    assert torch.equal(torch.rand(3), expected_draw)


class _Payload:
    """Unpickling this runs ``os.system`` (what a hostile state.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_checkpoint_is_refused_not_loaded(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import pickle  # only to write the hostile file; nothing here loads it

    from affedge.train.checkpoint import has_checkpoint

    marker = tmp_path / "escaped"
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(AffedgeError, match="not loaded") as caught:
        has_checkpoint(folder)
    _one_line(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "meta",
    [
        {"step": "1"},
        {"step": 1},  # nothing else
        {"step": 1, "optimizer": [], "rng": {}, "tokens": 0, "seconds": 0, "history": []},
        [1, 2],
    ],
    ids=["step_type", "missing_fields", "wrong_types", "not_an_object"],
)
def test_a_malformed_checkpoint_is_refused_with_one_line(tmp_path: Path, meta: object) -> None:
    _, model, opt = _tiny_run(0)
    from affedge.train.lora import LoopResult, load_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, 1, {"model": model}, opt, LoopResult(steps=1, seconds=0, tokens=0))
    (folder / "state.json").write_text(json.dumps(meta))
    with pytest.raises(AffedgeError) as caught:
        load_checkpoint(folder, {"model": model}, opt, LoopResult(steps=1, seconds=0, tokens=0))
    assert _one_line(caught.value).startswith(str(folder))


def test_a_checkpoint_for_other_adapters_is_refused(tmp_path: Path) -> None:
    torch, model, opt = _tiny_run(0)
    from affedge.train.lora import LoopResult, load_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, 1, {"model": model}, opt, LoopResult(steps=1, seconds=0, tokens=0))
    wider = torch.nn.Linear(5, 3)
    other_opt = torch.optim.AdamW(wider.parameters())
    with pytest.raises(AffedgeError, match="does not match this run's adapters") as caught:
        load_checkpoint(folder, {"model": wider}, other_opt, LoopResult(1, 0, 0))
    _one_line(caught.value)
    (folder / "state.safetensors").write_bytes(b"\xff" * 64)  # a corrupt tensor file
    with pytest.raises(AffedgeError, match="unreadable checkpoint") as caught:
        load_checkpoint(folder, {"model": model}, opt, LoopResult(1, 0, 0))
    _one_line(caught.value)
