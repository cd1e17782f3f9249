"""Annotation on Ray Data (affedge.ray_data, `--ray`) on a real local Ray cluster of 2 CPUs.

One cluster serves the module (Ray takes seconds to start); the CLI runs in subprocesses that
join it with --ray-address. Every output is compared with what the single-process run
(:func:`affedge.runner.annotate_file`, which `affedge classify SHARD -o OUT` wraps) writes for
the same shard, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from affedge.errors import InputError
from affedge.runner import Job

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

from affedge.ray_data import ShardAnnotator, annotate_dataset, annotate_shards  # noqa: E402

SHARDS = ("a.jsonl", "b.csv", "c.parquet")
SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster of 2 CPUs; its address for subprocesses to join."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the crashing subclasses
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small shards: JSONL (a blank line, context, speaker), CSV (a blank row, a text of
    digits, a quoted comma) and Parquet (aspect and context columns)."""
    folder = tmp_path_factory.mktemp("shards")
    lines = [
        {"text": "What a wonderful film, I loved it."},
        {"text": "Awful, boring and far too long.", "speaker": "Ann"},
        None,
        {"text": "I guess it was fine.", "context": ["Did you like it?"]},
        {"text": "Le film était magnifique !"},
        {"text": "Worst purchase of my life."},
    ]
    (folder / "a.jsonl").write_text(
        "".join((json.dumps(x, ensure_ascii=False) if x else "") + "\n" for x in lines)
    )
    (folder / "b.csv").write_text(
        'id,text\n1,"Loved every minute, truly."\n\n2,Terrible acting.\n3,12345\n'
        "4,The plot was thin but the cast was great.\n5,Not bad at all.\n"
    )
    table = pa.table({
        "text": ["The battery lasts forever.", "I want my money back.", "Meh.", "So happy!"],
        "aspect": [None, "price", None, None],
        "context": [[], [], ["How was it?"], []],
    })  # fmt: skip
    pq.write_table(table, folder / "c.parquet")
    return folder


def reference(shards: Path, out: Path, model: str | None = None, fmt: str = "jsonl") -> Path:
    """What the single-process run writes for each shard, on one thread as a Ray worker runs
    (Ray sets OMP_NUM_THREADS=1 in its workers, and the static tier's numpy BLAS takes its
    thread count from there: float sums split over more threads move the last digits)."""
    out.mkdir(exist_ok=True)
    script = "import sys; from affedge.runner import Job, annotate_file\n" + "".join(
        f"annotate_file({str(shards / name)!r}, Job(), {model!r}, "
        f"__import__('pathlib').Path({str(out / (Path(name).stem + '.' + fmt))!r}), {fmt!r}, "
        "threads=1)\n"
        for name in SHARDS
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=600)
    return out


def ids(path: Path) -> list[Any]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def same_shards(got: Path, want: Path, suffix: str = ".jsonl") -> None:
    for name in SHARDS:
        stem = Path(name).stem
        assert (got / f"{stem}{suffix}").read_bytes() == (want / f"{stem}{suffix}").read_bytes()
    assert not list(got.glob("*.partial"))


def test_cli_on_ray_writes_what_the_single_process_cli_writes(cluster, shards, tmp_path, cli):
    want = reference(shards, tmp_path / "want")
    out = tmp_path / "out"
    res = cli("classify", shards, "-o", out, "--ray-address", cluster, "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "14 items in 3 shards" in res.stderr.splitlines()[-1]
    same_shards(out, want)
    assert ids(out / "a.jsonl") == [1, 2, 4, 5, 6]  # line numbers: the blank line counts
    assert ids(out / "b.jsonl") == [1, 2, 3, 4, 5]  # data rows: the blank one does not

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
    again = cli("classify", shards, "-o", out, "--ray-address", cluster)
    assert again.returncode == 0 and "all 3 shards" in again.stderr, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl")} == stamps


@pytest.mark.parametrize(
    ("model", "fmt"),
    [("minilm-affect-static", "parquet"), (SMOLLM2, "csv")],
    ids=["static", "gguf"],
)
def test_static_and_gguf_models_on_ray(cluster, shards, tmp_path, model, fmt):
    if model == SMOLLM2:
        pytest.importorskip("llama_cpp")
    want = reference(shards, tmp_path / "want", model, fmt)
    run = annotate_shards(str(shards), tmp_path / "out", Job(), model, out_format=fmt, workers=2)
    assert (run.items, run.shards, run.skipped) == (14, 3, 0)
    suffix = f".{fmt}"
    if fmt == "parquet":  # compare the tables: the files carry writer metadata
        for name in SHARDS:
            stem = Path(name).stem
            got = pq.read_table(tmp_path / "out" / f"{stem}{suffix}")
            assert got.to_pylist() == pq.read_table(want / f"{stem}{suffix}").to_pylist()
    else:
        same_shards(tmp_path / "out", want, suffix)


def test_annotate_dataset_gives_the_cli_labels(cluster, shards, tmp_path):
    want = reference(shards, tmp_path / "want")
    rows = [json.loads(line) for line in (want / "c.jsonl").read_text().splitlines()]
    items = pq.read_table(shards / "c.parquet").to_pylist()
    items.insert(1, {"text": "   ", "aspect": None, "context": []})  # skipped, as in files
    for n, item in enumerate(items):
        item["id"] = f"r{n}"
    got = annotate_dataset(ray.data.from_items(items), Job()).take_all()
    assert [r["label"] for r in got] == [r["label"] for r in rows]
    assert [r["id"] for r in got] == ["r0", "r2", "r3", "r4"]
    assert {r["truncated"] for r in got} == {False} and {r["chunks"] for r in got} == {1}
    for mine, cli in zip(got, rows, strict=True):
        assert mine["probs"] == pytest.approx(cli["probs"])


class CrashOnce(ShardAnnotator):
    """Dies (as a killed process does: no cleanup) on its 3rd row of b.csv while ``marker``
    exists, removing it first so the restarted actor goes through."""

    marker = ""

    def annotate_shard(self, path: str) -> Iterator[dict[str, Any]]:
        for n, row in enumerate(super().annotate_shard(path)):
            if n == 2 and path.endswith("b.csv") and os.path.exists(self.marker):
                os.unlink(self.marker)
                os._exit(1)
            yield row


def test_a_worker_killed_mid_shard_still_gives_every_row_once(cluster, shards, tmp_path):
    want = reference(shards, tmp_path / "want")
    marker = tmp_path / "crash-once"
    marker.touch()
    CrashOnce.marker = str(marker)
    run = annotate_shards(str(shards), tmp_path / "out", Job(), workers=2, annotator=CrashOnce)
    assert not marker.exists()  # the worker did die
    assert run.items == 14
    same_shards(tmp_path / "out", want)
    assert ids(tmp_path / "out" / "b.jsonl") == [1, 2, 3, 4, 5]


def test_a_rerun_skips_finished_shards_and_redoes_the_rest(cluster, shards, tmp_path):
    want = reference(shards, tmp_path / "want")
    out = tmp_path / "out"

    def stop(_rows: int) -> None:  # Ctrl-C as soon as the first shard is finished
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annotate_shards(str(shards), out, Job(), workers=1, on_rows=stop)
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.jsonl")}
    assert len(done) == 1
    # A shard the interrupted run was writing: a header, one row, a torn line.
    torn = next(out / f"{Path(n).stem}.jsonl.partial" for n in SHARDS if f"{Path(n).stem}.jsonl"
                not in done)  # fmt: skip
    head = json.dumps({"affedge_partial": 1, "items": 5})
    torn.write_text(head + "\n" + json.dumps({"id": 1, "text": "x"}) + '\n{"id": 2, "te')

    run = annotate_shards(str(shards), out, Job(), workers=2)
    (finished,) = done
    assert (run.skipped, run.items) == (1, 14 - len(ids(out / finished)))
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in
            ((n, out / n) for n in done)} == done  # fmt: skip
    same_shards(out, want)


def test_a_rerun_with_another_model_is_refused(shards, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jsonl").write_text("")  # a finished shard of some earlier run
    (out / ".affedge-ray.json").write_text(json.dumps({"model": "minilm-affect-static"}))
    with pytest.raises(InputError, match="holds results of a run with") as err:
        annotate_shards(str(shards), out, Job())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "x.parquet").write_bytes(b"not parquet at all"), "not a readable Parquet"),
        (lambda d: (d / "x.jsonl").write_text('{"text": "ok"}\n{"text": \n'), "x.jsonl:2"),
        (lambda d: (d / "x.csv").write_text("id\n1\n"), "no column 'text'"),
    ],
    ids=["unreadable-parquet", "malformed-jsonl", "csv-without-text"],
)
def test_bad_shards_are_one_line_before_ray_starts(tmp_path, make, message):
    """No cluster fixture: the shards are checked before Ray is started or joined."""
    (tmp_path / "in").mkdir()
    make(tmp_path / "in")
    with pytest.raises(InputError, match=message) as err:
        annotate_shards(str(tmp_path / "in"), tmp_path / "out", Job(), address="127.0.0.1:1")
    assert "\n" not in str(err.value) and not list(tmp_path.glob("out/*.jsonl*"))


def test_an_empty_folder_is_one_line_and_exit_2(tmp_path, cli):
    (tmp_path / "in").mkdir()
    res = cli("classify", tmp_path / "in", "-o", tmp_path / "out", "--ray", "--workers", "2")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"affedge: error: {tmp_path / 'in'}: no input shards in this folder "
        "(*.txt, *.csv, *.tsv, *.jsonl, *.parquet)"
    ]


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # as if affedge[ray] were not installed
import affedge.cli
sys.argv = ["affedge", "classify", sys.argv[1], "-o", sys.argv[2], "--ray"]
affedge.cli.main()
"""


def test_without_ray_the_flag_names_the_extra(shards, tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, str(shards), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "affedge: error: --ray needs Ray Data, which is not installed: pip install 'affedge[ray]'"
    ]
