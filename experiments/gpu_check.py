"""``make gpu-check`` (``python -m experiments.gpu_check``): what a session with one CUDA GPU runs
first, in a few minutes.

    make gpu-check                                  # outputs/gpu_check/gpu_check.{json,md}
    python -m experiments.gpu_check --out-dir outputs/h200 --no-tests

:func:`run_gpu_check` runs, in one process:

1. the CUDA-marked tests (``pytest -m cuda``, in a subprocess: pytest owns its process);
2. SAM ViT-B against bl_b at every keep ratio (and pooled keys/values at the low ones), in fp32
   and bf16, at batch 1 and 8 (:func:`~biglittle_sam.speed.measure.run_benchmark` on the GPU,
   one call per dtype);
3. a 50-step distillation smoke run of bl_b from a random SAM ViT-B teacher on a generated shapes
   dataset (cache the teacher's embeddings, then distil): it checks the training path, not quality;

and writes ``gpu_check.json`` and ``gpu_check.md`` into one folder. Where no CUDA device exists,
:func:`cuda_missing` says so in one line and the tool exits 0 without running anything. The
command line (:func:`main`) exits 1 when the CUDA-marked tests fail or the distillation does not
finish; 2 for usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from biglittle_sam.fileio import atomic_open, atomic_write_json
from biglittle_sam.runtime.hardware import hardware_description
from biglittle_sam.speed.measure import run_benchmark
from biglittle_sam.speed.report import to_markdown
from biglittle_sam.speed.rows import BenchmarkConfig
from biglittle_sam.train.cli import describe_defaults
from biglittle_sam.train.cli import given as given_flags
from biglittle_sam.train.cli import run_cli

__all__ = [
    "GpuCheckSettings",
    "build_parser",
    "cuda_missing",
    "gpu_check_markdown",
    "main",
    "run_gpu_check",
]


@dataclass
class GpuCheckSettings:
    """What :func:`run_gpu_check` runs. Defaults: the full-size check, sized for <= 8 minutes on
    one recent GPU (the benchmark is most of it)."""

    out_dir: str = "outputs/gpu_check"  # gpu_check.json and gpu_check.md
    device: str = "cuda"  # tests run the pipeline on "cpu" with tiny models
    sam: str = "vit_b"  # the baseline, and the distillation's (random) teacher
    model: str = "bl_b"  # the big.LITTLE model timed and distilled
    keep_ratios: Sequence[float] = (1.0, 0.5, 0.25, 0.1)
    pool_kv_ratios: Sequence[float] = (0.25, 0.1)
    dtypes: Sequence[str] = ("fp32", "bf16")
    batch_sizes: Sequence[int] = (1, 8)
    warmup: int = 3  # CUDA: kernels selected and caches filled before timing
    repeats: int = 10
    batch_repeats: int = 5
    distill_steps: int = 50
    distill_batch_size: int = 4
    distill_images: int = 16  # generated shapes images the teacher caches
    tests: bool = True  # run ``pytest -m cuda``
    test_paths: Sequence[str] = ("tests",)


def cuda_missing(device: str = "cuda") -> Optional[str]:
    """One line saying why the check skips (no CUDA device), or None when ``device`` can run."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "gpu-check: skipped, no CUDA device (torch.cuda.is_available() is False)"
    return None


def _run_tests(settings: GpuCheckSettings, say: Callable[[str], None]) -> Dict[str, Any]:
    """``pytest -m cuda`` in a subprocess: its exit status, time and last lines."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", *settings.test_paths]
    say("running " + " ".join(cmd[2:]))
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    # pytest exits 5 when no test is selected: nothing CUDA-marked under the paths.
    status = {0: "passed", 5: "no CUDA-marked tests"}.get(done.returncode, "failed")
    return {
        "command": " ".join(cmd[2:]),
        "exit_code": done.returncode,
        "status": status,
        "wall_s": time.perf_counter() - start,
        "summary": lines[-1] if lines else "",
        "tail": lines[-20:],
    }


def _speed(settings: GpuCheckSettings, say: Callable[[str], None]) -> Dict[str, Any]:
    """One benchmark report per dtype, SAM against big.LITTLE, no peers."""
    reports = {}
    for dtype in settings.dtypes:
        cfg = BenchmarkConfig(
            sam=settings.sam,
            model=settings.model,
            keep_ratios=tuple(settings.keep_ratios),
            pool_kv_ratios=tuple(settings.pool_kv_ratios),
            peers=(),
            device=settings.device,
            dtype=dtype,
            batch_sizes=tuple(settings.batch_sizes),
            max_batch_others=None,
            warmup=settings.warmup,
            repeats=settings.repeats,
            batch_repeats=settings.batch_repeats,
        )
        say(f"speed: {settings.sam} against {settings.model}, {dtype}")
        reports[dtype] = run_benchmark(cfg, progress=say)
    return reports


def _distill_smoke(settings: GpuCheckSettings, say: Callable[[str], None]) -> Dict[str, Any]:
    """Cache a random ``sam`` teacher on generated shapes, distil ``model`` for a few steps."""
    from biglittle_sam.build_sam import build_sam_from_config
    from biglittle_sam.checkpoint import save_model_checkpoint
    from biglittle_sam.config import get_config
    from biglittle_sam.data.shapes import ShapesConfig, make_shapes_dataset
    from biglittle_sam.distill.cache import CacheSettings, cache_teacher_embeddings
    from biglittle_sam.distill.distill import DistillSettings, run_distillation
    from biglittle_sam.train import TrainSettings

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bl_gpu_check_") as tmp:
        root = Path(tmp)
        data = make_shapes_dataset(
            root / "shapes", ShapesConfig(num_images=settings.distill_images, formats=("coco",))
        )
        torch.manual_seed(0)
        teacher_config = get_config(settings.sam)
        teacher = save_model_checkpoint(
            root / "teacher.pth", build_sam_from_config(teacher_config), teacher_config
        )
        images = str(data.coco_images)
        say(f"distill smoke: caching the {settings.sam} teacher on {data.num_images} images")
        cache_teacher_embeddings(
            CacheSettings(
                images=images,
                out=str(root / "cache"),
                teacher_checkpoint=str(teacher),
                batch_size=settings.distill_batch_size,
                num_workers=0,
                device=settings.device,
                progress=False,
            )
        )
        say(f"distill smoke: {settings.distill_steps} steps of {settings.model}")
        result = run_distillation(
            DistillSettings(
                cache=str(root / "cache"),
                images=images,
                student=settings.model,
                teacher_checkpoint=str(teacher),
                save_init=False,
                train=TrainSettings(
                    steps=settings.distill_steps,
                    batch_size=settings.distill_batch_size,
                    device=settings.device,
                    num_workers=0,
                    progress=False,
                    log_every=max(1, settings.distill_steps // 5),
                    checkpoint_every=settings.distill_steps,
                    out_dir=str(root / "distill"),
                ),
            )
        )
    return {
        "steps": result.step,
        "finished": result.finished,
        "last_loss": result.last_loss,
        "train_wall_s": result.wall_s,
        "images_per_s": result.images_per_s,
        "wall_s": time.perf_counter() - start,
    }


def run_gpu_check(
    settings: GpuCheckSettings, progress: Optional[Callable[[str], None]] = None
) -> Dict[str, Any]:
    """Run the check (see the module docstring) and write its JSON and markdown.

    Returns:
      {"meta", "tests", "speed": {dtype: benchmark report}, "distill", "ok"}; ``ok`` is False
      when the tests failed or the distillation did not finish.

    Raises:
      RuntimeError: ``settings.device`` is CUDA and none exists (call :func:`cuda_missing` first
        to skip instead).
    """
    say = progress or (lambda msg: None)
    missing = cuda_missing(settings.device)
    if missing:
        raise RuntimeError(missing)
    start = time.perf_counter()
    out: Dict[str, Any] = {
        "meta": {
            "hardware": hardware_description(settings.device),
            "torch": torch.__version__,
            "settings": {
                k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()
            },
            "date": time.strftime("%Y-%m-%d"),
        }
    }
    out["tests"] = _run_tests(settings, say) if settings.tests else None
    out["speed"] = _speed(settings, say)
    out["distill"] = _distill_smoke(settings, say)
    out["meta"]["wall_s"] = time.perf_counter() - start
    tests_ok = out["tests"] is None or out["tests"]["status"] != "failed"
    out["ok"] = bool(tests_ok and out["distill"]["finished"])
    folder = Path(settings.out_dir)
    atomic_write_json(folder / "gpu_check.json", out, indent=2)
    with atomic_open(folder / "gpu_check.md", "w") as f:
        f.write(gpu_check_markdown(out) + "\n")
    return out


def gpu_check_markdown(result: Dict[str, Any]) -> str:
    """The check as markdown: the tests' outcome, one speed table per dtype, the distill smoke."""
    meta = result["meta"]
    lines: List[str] = [
        f"# gpu-check: {meta['hardware']}",
        "",
        f"torch {meta['torch']}, {meta['date']}, {meta['wall_s']:.0f} s in all.",
        "",
    ]
    tests = result.get("tests")
    if tests is not None:
        lines += [
            f"**CUDA-marked tests** (`{tests['command']}`): {tests['status']} "
            f"(exit {tests['exit_code']}, {tests['wall_s']:.0f} s): {tests['summary']}",
            "",
        ]
    for dtype, report in result["speed"].items():
        lines += [f"## Encoder speed, {dtype}", "", to_markdown(report), ""]
    d = result["distill"]
    loss = "-" if d["last_loss"] is None else f"{d['last_loss']:.4g}"
    lines += [
        "## Distillation smoke run",
        "",
        f"{d['steps']} steps ({'finished' if d['finished'] else 'NOT finished'}), last loss "
        f"{loss}, {d['images_per_s']:.1f} images/s, {d['wall_s']:.0f} s with the teacher cache "
        "(random teacher on generated shapes: a check of the path, not of quality).",
    ]
    return "\n".join(lines)


_DEFAULTS = dataclasses.asdict(GpuCheckSettings())


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags; each left out keeps :class:`GpuCheckSettings`' default."""
    parser = argparse.ArgumentParser(
        prog="gpu-check",
        description="On one CUDA GPU: the CUDA-marked tests, SAM against big.LITTLE at every keep "
        "ratio in fp32 and bf16 at batch 1 and 8, and a short distillation; JSON and markdown "
        "into one folder. Skips with one line where no CUDA device exists.",
    )
    parser.add_argument("--out-dir", default=None, help="folder for gpu_check.json and .md")
    parser.add_argument("--sam", default=None, help="baseline SAM registry name")
    parser.add_argument("--model", default=None, help="big.LITTLE registry name")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds at batch 1")
    parser.add_argument("--distill-steps", type=int, default=None, help="distillation steps")
    parser.add_argument(
        "--tests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the CUDA-marked tests (pytest -m cuda) (default: on)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a line per stage on stderr (default: on)",
    )
    return describe_defaults(parser, _DEFAULTS)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check from the command line; returns the exit status (0: ok or skipped)."""
    args = build_parser().parse_args(argv)
    missing = cuda_missing()
    if missing:
        print(missing)
        return 0
    given: Dict[str, Any] = {"tests": args.tests}
    given.update(given_flags(args, ("out_dir", "sam", "model", "repeats", "distill_steps")))
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.progress else None
    result = run_cli(lambda: run_gpu_check(GpuCheckSettings(**given), progress=log))
    folder = given.get("out_dir", GpuCheckSettings.out_dir)
    print(f"gpu-check: {'ok' if result['ok'] else 'FAILED'}; wrote {folder}/gpu_check.json and .md")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
