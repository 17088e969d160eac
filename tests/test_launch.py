"""The launcher runs a gloo job, and fails fast: one crashed rank ends the whole job within
seconds, with its error."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from biglittle_sam.train.launch import launch


def _job(crash_file: str) -> str:
    """Two gloo ranks stepping together; rank 1 raises at step 2 while rank 0 is in a long step
    that ignores SIGTERM (as the training loop does: it only asks itself to stop after the step)."""
    import torch
    import torch.distributed as dist

    from biglittle_sam.runtime.distributed import init_distributed

    ctx, _ = init_distributed("cpu")
    for step in range(5):
        dist.all_reduce(torch.ones(4))
        if step == 2 and ctx.rank == 1:
            Path(crash_file).write_text(repr(time.time()))
            raise ValueError("rank 1 exploded at step 2")
        if step == 2 and ctx.rank == 0:
            signal.signal(signal.SIGTERM, lambda *_: None)
            time.sleep(600)  # stands for a long step, or a collective waiting on the dead peer
    ctx.close()
    return "finished"


def test_a_crashed_rank_ends_the_job_within_seconds(tmp_path: Path) -> None:
    crash_file = tmp_path / "crashed_at"
    with pytest.raises(RuntimeError) as info:
        launch(_job, str(crash_file), nproc=2, threads=1, grace_s=2.0)
    ended = time.time()
    crashed = float(crash_file.read_text())
    assert ended - crashed < 30.0  # not the 600 s step, nor the collective timeout
    message = str(info.value)
    assert "worker process 1 of 2" in message
    assert "ValueError: rank 1 exploded at step 2" in message


def _rank_and_sum(_: object) -> Dict[str, Any]:
    import torch
    import torch.distributed as dist

    from biglittle_sam.runtime.distributed import init_distributed

    ctx, _device = init_distributed("cpu")
    try:
        value = torch.tensor([float(ctx.rank + 1)])
        dist.all_reduce(value)
        return {"world": ctx.world_size, "backend": ctx.backend, "sum": float(value)}
    finally:
        ctx.close()


def test_launch_runs_a_gloo_job() -> None:
    assert launch(_rank_and_sum, None, 2, threads=1) == {"world": 2, "backend": "gloo", "sum": 3.0}
