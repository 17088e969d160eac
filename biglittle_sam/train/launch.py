"""Run a function as a small gloo job on this machine, the way torchrun would.

``launch(run_distillation, settings, nproc=2)`` starts ``nproc`` processes with the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the
library's own ``init_distributed`` joins them into one group. The proxy benchmark uses it to put
both cores of a small CPU machine to work; on a cluster, use torchrun.

The processes are started by ``torch.multiprocessing.start_processes``, and the job fails fast:
when one rank raises, the others are stopped within seconds and the first rank's error is raised
here, instead of its peers waiting out the collective timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import torch

__all__ = ["launch", "free_port"]

R = TypeVar("R")

# Seconds the other processes get to end by themselves once one has failed, and again after SIGTERM.
GRACE_S = 3.0
# Seconds the workers get after SIGTERM when this process is stopped: they finish their step and
# write a checkpoint before they exit.
STOP_GRACE_S = 60.0


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world_size: int,
    port: int,
    threads: Optional[int],
    fn: Callable[[Any], Any],
    arg: Any,
    queue: Any,
) -> None:
    """Process ``rank``'s body (called by ``start_processes`` as ``_worker(rank, *args)``)."""
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = fn(arg)
    except BaseException as e:
        # The time tells the first failure from its consequences: the peers of a crashed rank fail
        # too, in their next collective, a little later.
        detail = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        queue.put((rank, "error", (time.time(), detail)))
        raise SystemExit(1) from None
    if rank == 0:
        queue.put((rank, "ok", result))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def launch(
    fn: Callable[[Any], R],
    arg: Any,
    nproc: int,
    threads: Optional[int] = None,
    grace_s: float = GRACE_S,
) -> R:
    """``fn(arg)`` in ``nproc`` processes joined by gloo; returns rank 0's result.

    ``fn`` and ``arg`` must be picklable (a module-level function and a settings dataclass).
    With ``nproc`` 1, ``fn(arg)`` runs in this process. The job fails fast: as soon as one process
    exits with an error, the others get ``grace_s`` seconds to end, then SIGTERM, then after
    another ``grace_s`` SIGKILL (a rank blocked in a collective on a dead peer handles no signal).

    Raises:
      RuntimeError: a process failed; the message names the first rank that failed and carries
        its error and traceback.
    """
    if nproc <= 1:
        if threads is not None:
            torch.set_num_threads(threads)
        return fn(arg)
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    queue = mp.get_context("spawn").SimpleQueue()
    port = free_port()
    messages: List[Tuple[int, str, Any]] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM on this process becomes an exception, so the workers are stopped too (they
        # checkpoint on SIGTERM and can be resumed) instead of being left running.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    context = None
    failure: Optional[BaseException] = None
    try:
        context = mp.start_processes(
            _worker,
            args=(nproc, port, threads, fn, arg, queue),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        # Drain the queue while waiting: a large result would otherwise fill the pipe and block
        # its sender, which would then never exit.
        while True:
            _drain(queue, messages)
            try:
                if context.join(timeout=0.1, grace_period=grace_s):
                    break
            except ProcessException as e:  # one failed; join stopped the others
                failure = e
                break
    except BaseException:
        if context is not None:
            _stop(context.processes, STOP_GRACE_S)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _drain(queue, messages)
    errors = sorted((m[2][0], m[0], m[2][1]) for m in messages if m[1] == "error")
    name = getattr(fn, "__name__", fn)
    if errors:
        _, rank, detail = errors[0]
        raise RuntimeError(f"{name} failed in worker process {rank} of {nproc}: {detail}")
    if failure is not None:
        raise RuntimeError(f"{name} failed in a worker process: {failure}")
    (result,) = [m[2] for m in messages if m[1] == "ok"]
    return result


def _drain(queue: Any, into: List[Tuple[int, str, Any]]) -> None:
    while not queue.empty():
        into.append(queue.get())


def _stop(processes: Sequence[Any], grace_s: float) -> None:
    """SIGTERM every live process; SIGKILL those still alive ``grace_s`` seconds later."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()
