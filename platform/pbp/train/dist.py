"""The only module that reads rank and world size: a frozen view of Ray Train's context (or of one rank run in this
process), the collectives the loops use, and process groups for tests and benchmarks without Ray."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    node_rank: int
    local_world_size: int = 1
    """Ranks on this rank's node (Ray Train's local world size: the local stack's nodes share one IP, so one node)."""
    in_ray_train: bool = False
    """A Ray Train worker (checkpoints and metrics go through ``ray.train.report``); else a loop run in this process
    (``pbp bench gpu``, tests), whose checkpoints are committed to storage directly (each file's upload retried as
    always; the metrics a save would report go nowhere)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_ray(cls) -> DistContext:
        import ray.train

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), ctx.get_node_rank(),
                   ctx.get_local_world_size(), in_ray_train=True)  # fmt: skip

    @classmethod
    def single(cls) -> DistContext:
        return cls(0, 1, 0, 0)


def _active(ctx: DistContext) -> bool:
    import torch.distributed as dist

    return ctx.world_size > 1 and dist.is_initialized()


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable value such as a name or a small dict)."""
    if not _active(ctx):
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_min(value: float, ctx: DistContext) -> float:
    if not _active(ctx):
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def barrier(ctx: DistContext) -> None:
    if _active(ctx):
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    if not _active(ctx):
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


GRADIENT_BUCKET_BYTES = 25 * 2**20
"""Gradients are exchanged in buckets of about this size (DDP's default): one all-reduce per bucket instead of per
tensor. The base model's body has 145 tensors; on 2 gloo ranks one bucketed exchange took 0.3-0.6 of the per-tensor
time (``pbp bench tune --parts exchange``)."""


def average_gradients(params: Iterable[Any], ctx: DistContext, bucket_bytes: int = GRADIENT_BUCKET_BYTES) -> None:
    """Data parallelism without a wrapper: average the gradients of ``params`` over ranks after backward (works
    when the set of trainable parameters changes between stages, which DDP's wrapper does not allow). Small
    gradients travel together, flattened into buckets of up to ``bucket_bytes``; a bucket of one tensor is reduced in
    place (no copy). Every rank must pass the same parameters in the same order with the same gradients present."""
    if not _active(ctx):
        return
    import torch
    import torch.distributed as dist

    for bucket in gradient_buckets([p.grad for p in params if p.grad is not None], bucket_bytes):
        if len(bucket) == 1:
            flat = bucket[0]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        else:
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for g, reduced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket), strict=True):
                g.copy_(reduced)
        for g in bucket:
            g /= ctx.world_size


def gradient_buckets(grads: list[Any], bucket_bytes: int) -> list[list[Any]]:
    """Consecutive tensors of one dtype and device, at most ``bucket_bytes`` together (a larger tensor alone)."""
    buckets: list[list[Any]] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        last = buckets[-1] if buckets else None
        if last is None or size + nbytes > bucket_bytes or (g.dtype, g.device) != (last[0].dtype, last[0].device):
            buckets.append([g])
            size = nbytes
        else:
            last.append(g)
            size += nbytes
    return buckets


WORKER_OF_RUN = "pbp: worker of run "
"""The line every rank of a Ray Train fine-tuning prints as it starts (:func:`announce_worker`): the driver never
prints it, and keeps which run the process works for (pbp.train.launch.mute_stopped_run)."""


def announce_worker(run_name: str) -> None:
    """In a Ray Train worker: say which run this process works for."""
    print(f"{WORKER_OF_RUN}{run_name}", flush=True)


def quiet_ray_train_reports() -> None:
    """In a Ray Train worker, before anything prints: (1) ``print`` back to Python's own (Ray Train V2 patches it to
    tee every line to stdout AND to the root logger, i.e. stderr, so each line reached the terminal twice); (2)
    drop Ray's INFO line per ``ray.train.report`` ("Reporting training result N: TrainingReport(...)", a raw dump
    repeated per rank): pbp prints its own progress lines; (3) torch's FutureWarning that DeepSpeed's ZeRO gather
    calls a deprecated collective (printed per rank, about DeepSpeed's code, nothing a user can act on). Other
    warnings still show. (4) stdout line-buffered: a worker's stdout is a file, so a library's unflushed ``print``
    (DeepSpeed's op-build line) reached the terminal when the worker exited, after the run's closing lines. (5)
    MLflow's "View run ... at: URL" lines when rank 0 ends its run: the driver's closing lines give the run's link."""
    import builtins
    import logging
    import os
    import sys
    import warnings

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    warnings.filterwarnings("ignore", r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning)
    try:
        from ray.train.v2._internal.execution import context
        from ray.train.v2._internal.logging import patch_print
    except ImportError:  # another Ray layout: keep its behaviour
        return
    builtins.print = patch_print._original_print
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def spawn_gloo_ranks(fn: Callable[..., None], world_size: int, args: tuple[Any, ...], rendezvous: str,
                     nodes: int = 1) -> None:  # fmt: skip
    """Run ``fn(ctx, *args)`` on ``world_size`` spawned processes, one thread each, joined in a gloo process group
    through the file ``rendezvous`` (a path that must not exist yet; none for one rank). For tests and benchmarks
    of the collectives above without Ray; ``fn`` must be importable (a module-level function). Raises when a rank
    fails, with its traceback. ``nodes``: the ranks present themselves as spread evenly over that many nodes (their
    local ranks and node ranks say so), though all run here."""
    import torch.multiprocessing as mp

    if nodes < 1 or world_size % nodes:
        raise ValueError(f"{world_size} ranks cannot spread evenly over {nodes} nodes")
    mp.start_processes(_gloo_rank, (fn, world_size, rendezvous, args, world_size // nodes), nprocs=world_size,
                       start_method="spawn")  # fmt: skip


def _gloo_rank(rank: int, fn: Callable[..., None], world_size: int, rendezvous: str, args: tuple[Any, ...],
               per_node: int) -> None:  # fmt: skip
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        fn(DistContext(rank, world_size, rank % per_node, rank // per_node, per_node), *args)
        if world_size > 1:
            # Without it a rank that tears down while another still talks to it aborts now and then in gloo's
            # threads ("terminate called without an active exception", SIGABRT: 3 of 8 runs of a 2-rank test).
            dist.barrier()
    finally:
        if world_size > 1:
            dist.destroy_process_group()


ONE_RANK_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")


def one_rank_env() -> dict[str, str]:
    """torch.distributed's rendezvous variables for one rank in this process (DeepSpeed's ``init_distributed`` reads
    them), on a free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return dict(zip(ONE_RANK_KEYS, ("127.0.0.1", str(port), "0", "1", "0", "1"), strict=True))


@contextmanager
def one_rank_group() -> Iterator[None]:
    """The block runs as the only rank of its own process group: :func:`one_rank_env` set (over any inherited from a
    scheduler), then the caller's variables (``DS_ACCELERATOR`` too, which the DeepSpeed engine sets) restored and a
    process group made in the block destroyed (through DeepSpeed where it made it, which forgets its own references
    too, so that a later DeepSpeed engine in this process makes a new one)."""
    import sys

    import torch.distributed as dist

    saved = {k: os.environ.get(k) for k in (*ONE_RANK_KEYS, "DS_ACCELERATOR")}
    had_group = dist.is_initialized()
    os.environ.update(one_rank_env())
    try:
        yield
    finally:
        if not had_group and dist.is_initialized():
            ds_comm = sys.modules.get("deepspeed.comm")
            if ds_comm is not None and ds_comm.is_initialized():
                ds_comm.destroy_process_group()
            else:
                dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
