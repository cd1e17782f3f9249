"""Data-parallel training over several processes (``accelerate launch``, or ``--processes N``).

Every training loop (train/lora.py ``train_loop``, train/encoder.py) calls :func:`world`. Not
launched distributed (no ``WORLD_SIZE`` > 1 in the environment) it is a one-process
:class:`World` whose methods do nothing, and accelerate is never imported. Launched by
``accelerate launch`` (torchrun's environment), accelerate's ``PartialState`` joins the
process group: NCCL on GPUs (one per process, ``cuda:LOCAL_RANK``), gloo on the CPU.

The design keeps a distributed run the single-process run, computed by several processes:

* **Data**: every rank draws the same global batch (``next_batch(step, micro)``, the encoder's
  sampler) and keeps its contiguous slice (:meth:`World.shard`). The effective batch, the data
  order and ``--resume`` are exactly those of one process (a checkpoint holds no per-rank
  data state), whatever the number of processes.
* **Loss**: each rank computes its slice's *contribution* to the global loss, so that the
  contributions add up to the single-process loss. The loss functions take the global batch
  (``whole=``) for the denominators: the mean over the batch's answer tokens becomes the slice's
  token sum over the global token count; a per-task mean becomes the slice's task sum over the
  task's global count; T-AWL and D-AWL are linear in those means. The counts come from the
  global batch every rank holds, so no communication is needed for them.
* **Gradients**: one flat all-reduce (sum) per optimizer step after the micro-batches (what
  DDP's buckets do, with accumulation under ``no_sync``), so each step equals the
  single-process step up to float summation order. DDP itself (``Accelerator.prepare``) is not
  used: the loops call submodules, not the wrapper's ``forward`` that DDP's reducer relies on
  (the decoder body and ``lm_head`` at the answer positions only, the encoder's pooled output
  and its heads, the T-AWL/D-AWL modules); and a parameter no rank used in a step (a head
  absent from the batch) must keep ``grad=None`` so AdamW leaves it alone, as on one process.
* **Dropout**: in a distributed run the torch RNG is re-seeded every step from (seed, step,
  rank): ranks draw different masks, and a resumed run draws the same ones. The masks cannot
  be the single-process ones, so with dropout the trajectories agree in distribution only
  (tests compare them with dropout off).
* **Main process only**: logging, checkpoints, the saved model and manifest, evaluation; the
  other ranks wait at a barrier (:meth:`World.barrier`, :meth:`World.main_first`). At the end
  of a loop :meth:`World.check_replicas` fails loudly if the replicas' weights differ.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from affedge.errors import AffedgeError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: The key :meth:`World.sum_values` callers use for token counts (summed with the logs).
TOKENS = "_tokens"


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (rank 0 of 1 when not launched)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ data

    def check_batch(self, batch_size: int) -> None:
        """Every rank needs at least one item of every global batch."""
        if batch_size < self.size:
            raise AffedgeError(
                f"batch size {batch_size} is smaller than the {self.size} processes: "
                "every process needs at least one item of each batch"
            )

    def shard(self, batch: Sequence[T]) -> list[T]:
        """This rank's contiguous slice of the global batch (slice sizes differ by at most
        one; the slices, in rank order, are the batch)."""
        n = len(batch)
        return list(batch[self.rank * n // self.size : (self.rank + 1) * n // self.size])

    # ------------------------------------------------------------------ devices and RNG

    def device(self, device: torch.device) -> torch.device:
        """``device`` for this rank: a CUDA device becomes ``cuda:LOCAL_RANK`` when
        distributed (one GPU per process); anything else is returned unchanged."""
        import torch

        if self.distributed and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def seed_step(self, seed: int, step: int) -> None:
        """Seed torch's RNG (dropout) from (seed, step, rank); distributed runs only."""
        if self.distributed:
            import torch

            torch.manual_seed((seed * 1_000_003 + step) * 1009 + self.rank)

    # ------------------------------------------------------------------ communication

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its sum over the ranks, in one all-reduce. A parameter
        that has no gradient on any rank keeps ``grad=None``; one that has a gradient on some
        rank gets the sum (zeros standing in for the ranks without one)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        params = list(params)
        if not params:
            return
        device = params[0].device
        has = torch.tensor(
            [float(p.grad is not None) for p in params], dtype=torch.float32, device=device
        )
        flat = torch.cat(
            [has]
            + [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in params
            ]
        )
        dist.all_reduce(flat)
        offset = len(params)
        for p, present in zip(params, flat[: len(params)].tolist(), strict=True):
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype) if present else None
            offset += n

    def sum_values(self, values: Mapping[str, float]) -> dict[str, float]:
        """``values`` summed over the ranks, key by key; every rank must pass the same keys
        (the loss functions name every task of the global batch)."""
        if not self.distributed:
            return dict(values)
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        counts = torch.tensor([len(keys), -len(keys)], dtype=torch.float64)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        if counts[0] != -counts[1]:
            raise AffedgeError(f"rank {self.rank}: logged values differ between processes")
        total = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(total)
        return dict(zip(keys, total.tolist(), strict=True))

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Rank 0's values into every rank's ``params`` (what DDP does at the start)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def check_replicas(self, params: Sequence[torch.nn.Parameter], what: str) -> None:
        """Fail if the ranks' copies of ``params`` differ (they never should: every rank
        applies the same summed gradients)."""
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum().cpu() for p in params])
        high, low = sums.clone(), -sums
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MAX)
        if not torch.equal(high, -low):
            raise AffedgeError(f"{what}: the processes' weights diverged (rank {self.rank})")

    def barrier(self) -> None:
        """Wait until every rank gets here (the main process saves or evaluates meanwhile)."""
        if self.distributed:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. the main one
        writes a cache the others then read)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    # ------------------------------------------------------------------ logging

    def main_log(self, log: Callable[[str], Any]) -> Callable[[str], Any]:
        """``log`` on the main process; a function that drops the line on the others."""
        if self.main:
            return log

        def quiet(_: str) -> None:
            """Other ranks: the main process logs."""

        return quiet


@functools.lru_cache(maxsize=1)
def world() -> World:
    """The data-parallel world of this process (joined once, on first use)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return World(state.process_index, state.num_processes, state.local_process_index)


# ------------------------------------------------------------------ re-launching


def launch(processes: int, argv: Sequence[str]) -> None:
    """Run ``python -m affedge.cli ARGV`` in ``processes`` data-parallel processes through
    accelerate's own launcher (the code behind ``accelerate launch --multi_gpu``: torchrun
    on one machine; one GPU per process where there are GPUs, gloo on the CPU)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        [
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "affedge.cli",
            *argv,
        ]
    )
    launch_command(args)


def without_option(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE`` (the re-launched command must not
    launch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out
