"""Data-parallel training under ``torchrun``: the few helpers the kit needs, in one place.

A single process is the default and nothing here changes it: without ``torchrun`` (no
``WORLD_SIZE`` > 1 in the environment and no initialised process group) every helper is a
no-op that returns the single-process answer, so notebooks and tests never see a process
group. Under ``torchrun --nproc_per_node W`` the *same* code runs in W processes, and:

- :func:`ferlib.train.fit` trains with DistributedDataParallel, each rank on its slice of
  every global batch (see :func:`shard`); :func:`ferlib.train.predict` predicts each rank's
  slice of the rows and gathers them, so every rank holds the whole result.
- every file written through :mod:`ferlib.io` (and so :mod:`ferlib.manifest`, checkpoints,
  histories, stage results, plots) is written by rank 0 only, while the others wait
  (:func:`run_on_main`): a run writes one set of files, and a file any rank reads after a
  write returned is complete. Stages and the runner need no changes of their own because
  they are rank-agnostic: every rank runs the same calls in the same order, so the
  collectives hidden in those writers line up.
- data preparation (decoding into the cache, writing the synthetic set) runs on rank 0 first
  (:func:`main_first`), so the ranks do not race to write the same files; the others then
  read what it wrote (a shared file system, i.e. one node, is assumed for data and outputs).

The rule that follows: code that runs under ``torchrun`` must call these collectives on every
rank (never inside ``if is_main():``), or the ranks wait for each other forever.

``torch`` is imported lazily, so :mod:`ferlib.io` (which asks :func:`is_distributed` on every
write) stays light to import.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")

__all__ = [
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "init",
    "is_distributed",
    "is_main",
    "local_device",
    "local_rank",
    "main_first",
    "rank",
    "run_on_main",
    "shard",
    "solo",
    "world_size",
]

#: How long a rank waits in a collective: rank 0 may decode a large data set into the cache
#: (:func:`main_first`) or write a big checkpoint while the others wait at a barrier, so the
#: default of torch (10-30 minutes) is too short for a first AffectNet decode.
TIMEOUT = timedelta(hours=2)

#: > 0 while this rank runs a block alone (:func:`solo`): collectives are off inside it.
_solo_depth = 0


def _group_initialised():
    """``torch.distributed`` when a process group is initialised, else None (and torch is
    not imported when nothing imported it yet)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Number of processes: the process group's size, else ``WORLD_SIZE`` (set by torchrun,
    so known before the group exists), else 1."""
    dist = _group_initialised()
    if dist is not None:
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE") or 1)


def rank() -> int:
    """This process's global rank (0 in a single process)."""
    dist = _group_initialised()
    if dist is not None:
        return dist.get_rank()
    return int(os.environ.get("RANK") or 0)


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``): its GPU index."""
    return int(os.environ.get("LOCAL_RANK") or 0)


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0; always True in a single process)."""
    return rank() == 0


def is_distributed() -> bool:
    """Whether collectives are on: more than one process, and not inside :func:`solo`.

    False in a single process, so every caller keeps its single-process path unchanged."""
    return _solo_depth == 0 and world_size() > 1


@contextmanager
def solo() -> Iterator[None]:
    """Run a block as if this were a single process: no collectives, and :mod:`ferlib.io`
    writes directly. For work one rank does alone (:func:`run_on_main`, :func:`main_first`),
    where a collective would wait for ranks that are not there."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def init(device: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment, once.

    Returns whether the run is distributed. Called lazily by every helper that needs a
    collective (and by :func:`ferlib.train.fit`), so the runner and notebooks need no
    distributed settings: torchrun supplies ``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE``...

    Backend: with CUDA, ``cpu:gloo,cuda:nccl`` (CUDA tensors, i.e. DDP's gradients on a GPU,
    go through NCCL; small CPU messages such as barriers and pickled objects through gloo,
    which NCCL cannot carry), and this process's GPU is ``cuda:LOCAL_RANK``; without CUDA,
    gloo. ``device`` is only checked: a CUDA device asked for without CUDA fails here.
    """
    if world_size() <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    atexit.register(_destroy)
    return True


#: seconds the main thread sleeps at exit (:func:`_destroy`)
EXIT_GRACE_S = 0.2


def _destroy() -> None:
    """At exit: let gloo's threads finish, then tear the process group down.

    Gloo's worker thread releases a collective's tensors just after the caller saw it
    complete, and releasing a tensor created in Python takes the GIL. A process that exits
    right after its last collective never hands the GIL over (interpreter teardown runs
    without the eval loop), and a thread taking it during teardown aborts the process
    ("terminate called without an active exception", SIGABRT after a finished run: about
    one torchrun launch in ten on a loaded 2-core CPU). Sleeping hands the GIL over; the
    group itself stays alive after DDP used it, so destroying it alone does not help."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        time.sleep(EXIT_GRACE_S)
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """The device this rank uses for ``device``: under torchrun any CUDA device becomes
    ``cuda:LOCAL_RANK`` (each process drives its own GPU, whatever index the caller named,
    e.g. the runner's ``--device cuda:0`` on every rank); otherwise ``device`` itself."""
    if world_size() > 1 and device.startswith("cuda"):
        return f"cuda:{local_rank()}"
    return device


def shard(n: int, index: int | None = None, size: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of rank ``index``'s slice of ``n`` items (default: this rank's, of
    :func:`world_size`): contiguous, in rank order, sizes differing by at most one (the
    first ``n % size`` ranks take one more), so concatenating the slices in rank order gives
    the items back in order."""
    index = rank() if index is None else index
    size = world_size() if size is None else size
    base, extra = divmod(n, size)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def barrier() -> None:
    """Wait until every rank gets here (no-op unless :func:`is_distributed`).

    An all-reduce of a CPU tensor, so it goes through gloo whatever the GPU backend."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    init()
    dist.all_reduce(torch.zeros(1))


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (float64, on the CPU); ``values`` as
    floats in a single process. For counts and sums of per-sample quantities (training
    loss, correct predictions), which add up to the single-process numbers."""
    if not is_distributed():
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    init()
    total = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(total)
    return total.tolist()


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    init()
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` in a single process."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    init()
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: Sequence[Any], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s (e.g. a module's buffers, so that
    every rank evaluates the state rank 0 saves). No-op in a single process."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    init()
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor, src=src)


class MainFailed(RuntimeError):
    """Raised on the other ranks when rank 0 failed in :func:`run_on_main`: they stop with
    rank 0's error instead of waiting for it forever."""


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone (inside :func:`solo`) while the others wait; every rank
    returns rank 0's result (pickled to the others), so this is also a barrier.

    What the kit writes goes through here (:func:`ferlib.io.atomic_write`), so a run writes
    one set of files and, once a write returned on any rank, the file is complete for every
    rank to read. An exception on rank 0 is raised there and as :class:`MainFailed` on the
    others. In a single process: ``fn()``."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            with solo():
                result = fn()
        except BaseException as exc:
            error = exc
    message = None if error is None else f"{type(error).__name__}: {error}"
    message, result = broadcast_object((message, result))
    if error is not None:
        raise error
    if message is not None:
        raise MainFailed(f"rank 0 failed: {message}")
    return result


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, alone, then the others run it (each alone, no barrier
    between them). For work that writes shared files the other ranks then reuse: data
    decoding into the cache and the synthetic set, so that the ranks do not race to write
    the same files and the others only read them. A plain block in a single process.

    Inside the block every rank is in :func:`solo`: its writes go to disk directly (rank
    0's first; by the time the others run they usually find the files and write nothing)."""
    if not is_distributed():
        yield
        return
    if not is_main():
        barrier()  # wait for rank 0 to finish the block
    try:
        with solo():
            yield
    finally:
        if is_main():
            barrier()  # release the others (also when rank 0 failed: they then fail themselves)


def runs_main_first(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: every call of ``fn`` runs inside :func:`main_first`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with main_first():
            return fn(*args, **kwargs)

    return wrapper
