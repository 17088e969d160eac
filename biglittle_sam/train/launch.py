"""Run a function as a small gloo job on this machine, the way torchrun would.

``launch(run_distillation, settings, nproc=2)`` starts ``nproc`` processes with the environment
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the
library's own ``init_distributed`` joins them into one group. The toy benchmark uses it to put both
cores of a small CPU machine to work; on a cluster, use torchrun.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from typing import Any, Callable, Optional, TypeVar

import torch

__all__ = ["launch", "free_port"]

R = TypeVar("R")


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
    except BaseException as e:  # reported to the parent, which raises it
        queue.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise SystemExit(1) from None
    if rank == 0:
        queue.put((rank, "ok", result))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def launch(fn: Callable[[Any], R], arg: Any, nproc: int, threads: Optional[int] = None) -> R:
    """``fn(arg)`` in ``nproc`` processes joined by gloo; returns rank 0's result.

    ``fn`` and ``arg`` must be picklable (a module-level function and a settings dataclass).
    With ``nproc`` 1, ``fn(arg)`` runs in this process.

    Raises:
      RuntimeError: a process failed; the message carries its error and traceback.
    """
    if nproc <= 1:
        if threads is not None:
            torch.set_num_threads(threads)
        return fn(arg)
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, nproc, port, threads, fn, arg, queue))
        for r in range(nproc)
    ]
    messages = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM on this process becomes an exception, so the workers are stopped too (they
        # checkpoint on SIGTERM and can be resumed) instead of being left running.
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for p in procs:
            p.start()
        # Drain the queue while waiting: a large result would otherwise fill the pipe and block
        # its sender, which join() would then wait for forever.
        while any(p.is_alive() for p in procs):
            while not queue.empty():
                messages.append(queue.get())
            time.sleep(0.05)
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=60)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for p in procs:
        p.join()
    while not queue.empty():
        messages.append(queue.get())
    errors = [m for m in messages if m[1] == "error"]
    if errors or any(p.exitcode != 0 for p in procs):
        detail = errors[0][2] if errors else f"exit codes {[p.exitcode for p in procs]}"
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in a worker process: {detail}")
    (result,) = [m[2] for m in messages if m[1] == "ok"]
    return result
