"""The demo's built-in models: a benchmark's teacher and student written as fp16 assets.

The proxy benchmark writes them (``--assets-dir``); the committed ones in ``biglittle_sam/assets``
come from its test-split run (``docs/benchmarks/proxy.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

from biglittle_sam.checkpoint import atomic_save, read_checkpoint
from biglittle_sam.fileio import atomic_open, atomic_write_json

__all__ = ["export_fp16", "write_assets"]


def export_fp16(source: Path, target: Path, **extra: Any) -> Path:
    """A model checkpoint with fp16 weights (half the size; loads into fp32 models unchanged)."""
    payload = read_checkpoint(source)
    payload["model"] = {
        k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()
    }
    payload.pop("train", None)
    payload.update(extra)
    return atomic_save(payload, target)


def write_assets(
    result: Dict[str, Any],
    teacher: Path,
    student: Path,
    assets: Path,
    prefix: str,
    table: Callable[[Dict[str, Any]], str],
) -> Dict[str, str]:
    """fp16 ``<prefix>_teacher.pth`` and ``<prefix>_student.pth`` plus ``<prefix>_models.json``
    (files, command, hardware, rows without per-object lists, targets) and ``<prefix>_models.md``
    (how to load them and the benchmark's table, ``table(result)``).

    Returns:
      The paths written: ``teacher``, ``student``, ``json`` and ``markdown``.
    """
    assets.mkdir(parents=True, exist_ok=True)
    name = f"{prefix} benchmark"
    t = export_fp16(teacher, assets / f"{prefix}_teacher.pth", note=f"{name} teacher (fp16)")
    st = export_fp16(student, assets / f"{prefix}_student.pth", note=f"{name} student (fp16)")
    description = {
        "teacher": {"file": t.name, "registry": "vit_tiny", "bytes": t.stat().st_size},
        "student": {
            "file": st.name,
            "registry": "bl_tiny",
            "bytes": st.stat().st_size,
            "variant": result.get("demo_student", "big.LITTLE"),
        },
        "command": result["command"],
        "hardware": result["hardware"],
        "wall_s": result["wall_s"],
        "rows": [
            {k: v for k, v in row.items() if not isinstance(v, list)} for row in result["rows"]
        ],
        "targets": result["targets"],
        "created": result["created"],
    }
    described = assets / f"{prefix}_models.json"
    atomic_write_json(described, description)
    size = read_checkpoint(t)["config"]["img_size"]
    text = (
        f"# The {name}'s teacher and student\n\n"
        f"`{t.name}` (`vit_tiny`, {size} px, trained from scratch on synthetic shapes) and "
        f"`{st.name}` (`bl_tiny` distilled from it: the table's "
        f"{result.get('demo_student', 'big.LITTLE')} rows), fp16 weights. Load them with "
        "`sam_model_registry['vit_tiny'](checkpoint=...)` and "
        "`sam_model_registry['bl_tiny'](checkpoint=..., keep_ratio=0.25)`.\n\n"
        f"Made by `{result['command']}`.\n\n" + table(result)
    )
    markdown = assets / f"{prefix}_models.md"
    with atomic_open(markdown, "w", encoding="utf-8") as f:
        f.write(text)
    return {
        "teacher": str(t),
        "student": str(st),
        "json": str(described),
        "markdown": str(markdown),
    }
