"""Distributed setup read from the environment torchrun (or SLURM + a MASTER_ADDR) provides.

One process per GPU (NCCL) or per CPU process (gloo); only rank 0 writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _env_int(*names: str) -> int | None:
    for n in names:
        if os.environ.get(n, "").strip():
            return int(os.environ[n])
    return None


def launch_rank() -> int:
    """This process's rank as the launcher set it (before any process group exists)."""
    world = _env_int("WORLD_SIZE") or (_env_int("SLURM_NTASKS") if os.environ.get("MASTER_ADDR") else None) or 1
    return (_env_int("RANK") or (_env_int("SLURM_PROCID") if world > 1 else None) or 0) if world > 1 else 0


def setup(device_pref: str = "auto") -> tuple[DistEnv, torch.device]:
    """Pick the device and, when launched by torchrun/SLURM with several processes, join the group."""
    world = _env_int("WORLD_SIZE") or (_env_int("SLURM_NTASKS") if os.environ.get("MASTER_ADDR") else None) or 1
    rank = _env_int("RANK") or (_env_int("SLURM_PROCID") if world > 1 else None) or 0
    local = _env_int("LOCAL_RANK") or (_env_int("SLURM_LOCALID") if world > 1 else None) or 0
    env = DistEnv(rank, world, local)
    if device_pref == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_pref)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"train.device = {device_pref!r} but no CUDA device is available")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return env, device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


@torch.no_grad()
def sync_buffers(model: torch.nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics) before an evaluation pass.

    Why: DDP broadcasts rank 0's buffers at the start of each training forward, and each rank then
    updates them with its own batch; after the last step they differ by that batch. Each rank
    evaluates its own share of the videos, so without this the numbers would come from a mix of
    models, none of them the one saved (rank 0's). A no-op outside a distributed run."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for b in unwrap(model).buffers():
        dist.broadcast(b, src=0)


def rng_states(device: torch.device) -> dict:
    """Every rank's random number generator states, for a checkpoint (a collective: every rank
    calls it, rank 0 writes the result): {"torch": rank 0's CPU state (all a checkpoint held before),
    "ranks": [{"torch": the CPU state, "cuda": the device's generator on CUDA}, ...] in rank order}.
    Each rank draws its own dropout masks (seeded by engine.rng_seed(seed, epoch, rank)), so a
    resumed rank must continue from its own state, not rank 0's. Only tensors, lists and dicts:
    the checkpoint still loads with weights_only=True."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    ranks = all_gather_objects(own)
    return {"torch": ranks[0]["torch"], "ranks": ranks}


def restore_rng_states(saved, rank: int, device: torch.device, fallback_seed: int) -> None:
    """Restore this rank's states from `rng_states`' dict. A checkpoint of an older gblend (a bare
    CPU state, or {"torch": state}) carries rank 0's only: every rank restores that, as that gblend
    did. A rank the checkpoint has no state for (resumed with more processes than it was saved
    with) is seeded from `fallback_seed` instead, so no two ranks draw the same masks. A CUDA
    state is restored on CUDA only (a run resumed on another device type starts that generator
    afresh)."""
    if isinstance(saved, torch.Tensor):
        saved = {"torch": saved}
    ranks = saved.get("ranks")
    if ranks is None:
        own = saved
    elif rank < len(ranks):
        own = ranks[rank]
    else:
        torch.manual_seed(fallback_seed)
        return
    torch.set_rng_state(own["torch"])
    if device.type == "cuda" and own.get("cuda") is not None:
        torch.cuda.set_rng_state(own["cuda"], device)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def wrap_model(model: torch.nn.Module, env: DistEnv, device: torch.device, compile_: bool = False) -> torch.nn.Module:
    """The model as trained: torch.compile'd on CUDA when asked, DistributedDataParallel when the
    run has several processes.

    A model with more than one head (G-Blend, hand-set or equal weights, the methods that follow it)
    is wrapped with `find_unused_parameters=True`: a step leaves out every head whose loss weight is
    0 (engine.train_one_epoch) — hand-set weights such as audio=0, the `raw`/`formula` rules or
    `min_weight = 0` giving a head that does not generalise no weight — so that head's parameters get
    no gradient, and DDP without it stops at the next step ("Expected to have finished reduction in
    the prior iteration"). Which heads are zero can change at every re-estimation (online G-Blend),
    so every multi-head model pays the graph walk, not only the runs that start with a zero weight.
    DDP leaves the gradient of a parameter no rank used untouched, as one process would."""
    if compile_ and device.type == "cuda":
        model = torch.compile(model)
    if env.enabled:
        multi_head = len(getattr(unwrap(model), "head_names", ())) > 1
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                          find_unused_parameters=multi_head)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def _stopped(why: str) -> str | None:
    """'rank R of W: <why>; how to resume' on a rank of a multi-process run; None otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return (f"rank {dist.get_rank()} of {dist.get_world_size()}: {why}; every file written so far is complete: run "
            f"the same launch command again with --resume to continue from the last checkpoint")


def launcher_stop() -> str | None:
    """The one-line message for a rank of a distributed run that its launcher stopped with SIGTERM:
    torchrun does that to every rank left when one fails, so the one that first sees the failure
    may be the launcher, not a collective (which `peer_failure` reports). None outside a
    distributed run (there SIGTERM is an ordinary interruption)."""
    return _stopped("stopped by the launcher (SIGTERM: another process of this distributed run stopped, "
                    "or the job was cancelled)")


# what gloo/NCCL say on the surviving ranks when another process stopped (their errors are plain
# RuntimeErrors in some versions, DistError subclasses in others)
_PEER_SIGNS = ("gloo", "nccl", "connection closed", "connection reset", "connection refused", "broken pipe",
               "timed out", "timeout", "watchdog", "socket", "peer")
# ... but this rank's own DataLoader says "timed out" too (a loader timeout, a worker's error)
_LOCAL_SIGNS = ("dataloader",)


def peer_failure(e: BaseException) -> str | None:
    """The one-line message for a collective that failed because another process of a distributed
    run stopped (killed, out of memory, its node gone): gloo/NCCL raise a RuntimeError on the
    surviving ranks. None when `e` is not that (not distributed, or another error: a RuntimeError of
    this rank's own — CUDA out of memory, a DDP reduction error — is not blamed on another process)."""
    if not isinstance(e, RuntimeError):
        return None
    text = str(e).lower()
    if not isinstance(e, dist.DistError) and (not any(k in text for k in _PEER_SIGNS)
                                              or any(k in text for k in _LOCAL_SIGNS)):
        return None
    short = " ".join(str(e).split()).split("] ", 1)[-1].split(". ")[0][:100]
    return _stopped(f"another process of this distributed run stopped ({short})")
