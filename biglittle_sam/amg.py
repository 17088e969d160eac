"""Automatic mask generation over a folder, written as segment_anything's ``scripts/amg.py`` does.

For every image ``<stem>.<ext>`` of the input (one file, or every file of a folder), the output
folder gets either

- ``<stem>/`` holding one PNG per mask (``0.png``, ``1.png``, ...; 0 or 255) and ``metadata.csv``
  with upstream's header (:data:`METADATA_HEADER`), or
- ``<stem>.json``: the list of masks with COCO RLE segmentations (``convert_to_rle``).

Runs resume: an image's result appears only once complete (the PNG folder is filled under a
temporary name with ``metadata.csv`` written last, then renamed; the json is written atomically),
so an image whose result exists is skipped by a re-run. Images that cannot be read are listed and
skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .build_sam import build_model_from_spec
from .fileio import atomic_open
from .model_spec import parse_model_spec, spec_with
from .modeling import set_keep_ratio
from .runtime.cli import flag
from .runtime.distributed import resolve_device
from .runtime.progress import Progress

__all__ = [
    "AMG_SETTINGS",
    "METADATA_HEADER",
    "AmgResult",
    "AmgSettings",
    "build_mask_generator",
    "find_images",
    "is_done",
    "result_path",
    "run_amg",
    "write_masks_to_folder",
]

PathLike = Union[str, os.PathLike]

# scripts/amg.py's metadata.csv header, byte for byte.
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
    "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)


@dataclass(frozen=True)
class AmgSettings:
    """The ``SamAutomaticMaskGenerator`` arguments that ``scripts/amg.py`` exposes as flags, under
    the same names. None keeps segment_anything's own default."""

    points_per_side: Optional[int] = None  # points per side of the image; points_per_side**2 in all
    points_per_batch: Optional[int] = None  # points per model call (memory, not results)
    pred_iou_thresh: Optional[float] = (
        None  # drop masks whose predicted quality is lower, in [0, 1]
    )
    stability_score_thresh: Optional[float] = None  # drop masks less stable under a cutoff change
    stability_score_offset: Optional[float] = None  # the cutoff change of the stability score
    box_nms_thresh: Optional[float] = None  # box IoU above which duplicate masks are dropped
    crop_n_layers: Optional[int] = (
        None  # also segment crops of the image: the number of crop layers
    )
    crop_nms_thresh: Optional[float] = None  # box IoU for dropping duplicates between crops
    crop_overlap_ratio: Optional[float] = None  # overlap of crops, as a share of the crop size
    crop_n_points_downscale_factor: Optional[int] = flag(
        None, "points per side on layer n are divided by this**n"
    )
    min_mask_region_area: Optional[int] = None  # remove holes and islands under this area (pixels)


# The same arguments with their types: {name: int or float}.
AMG_SETTINGS: Dict[str, type] = {
    name: typing.get_args(hint)[0] for name, hint in typing.get_type_hints(AmgSettings).items()
}


@dataclass
class AmgResult:
    """What a run did, image paths as given: written now, skipped (done before), failed (reason)."""

    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)


def find_images(input_path: PathLike) -> List[Path]:
    """The files to segment: ``input_path`` itself, or every file directly in that folder (sorted).

    Like ``scripts/amg.py``, every file of a folder is tried; the ones that are not images are
    listed as failed by :func:`run_amg`. Hidden files (``.name``) are left out.

    Raises:
      FileNotFoundError: the path does not exist.
      ValueError: two files share a stem (``a.jpg``, ``a.png``), so their outputs would collide.
    """
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path}: no such file or folder")
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if not p.is_dir() and not p.name.startswith("."))
    stems: Dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise ValueError(
                f"--input {path}: {stems[p.stem].name} and {p.name} would both write "
                f"'{p.stem}' in the output folder; rename one"
            )
        stems[p.stem] = p
    return files


def result_path(out_dir: PathLike, image: PathLike, convert_to_rle: bool) -> Path:
    """``<out_dir>/<stem>.json`` (RLE) or ``<out_dir>/<stem>`` (the folder of PNGs)."""
    stem = Path(image).stem
    return Path(out_dir) / (f"{stem}.json" if convert_to_rle else stem)


def is_done(out_dir: PathLike, image: PathLike, convert_to_rle: bool) -> bool:
    """Whether ``image``'s result is complete: its json, or its folder's ``metadata.csv`` (last)."""
    target = result_path(out_dir, image, convert_to_rle)
    return target.is_file() if convert_to_rle else (target / "metadata.csv").is_file()


def write_masks_to_folder(masks: Sequence[Dict[str, Any]], folder: PathLike) -> None:
    """``scripts/amg.py``'s layout: ``<i>.png`` (H x W, 0 / 255) per mask and ``metadata.csv``.

    ``metadata.csv`` is written last and atomically; it marks the folder complete.
    """
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [METADATA_HEADER]
    for i, mask in enumerate(masks):
        png = folder / f"{i}.png"
        if not cv2.imwrite(str(png), mask["segmentation"].astype(np.uint8) * 255):
            raise OSError(f"could not write {png}")
        values = [
            i,
            mask["area"],
            *mask["bbox"],
            *mask["point_coords"][0],
            mask["predicted_iou"],
            mask["stability_score"],
            *mask["crop_box"],
        ]
        rows.append(",".join(str(v) for v in values))
    with atomic_open(folder / "metadata.csv", "w") as f:
        f.write("\n".join(rows))  # no final newline, as upstream writes it


def _write_result(
    masks: List[Dict[str, Any]], out_dir: Path, image: Path, convert_to_rle: bool
) -> None:
    target = result_path(out_dir, image, convert_to_rle)
    if convert_to_rle:
        with atomic_open(target, "w") as f:
            json.dump(masks, f)
        return
    if target.exists():
        raise FileExistsError(
            f"{target} exists without metadata.csv (not written by a finished run); delete it to "
            "segment this image again"
        )
    partial = out_dir / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    write_masks_to_folder(masks, partial)
    os.replace(partial, target)


def _read_rgb(path: Path) -> Optional[np.ndarray]:
    """H x W x 3 uint8 RGB as ``scripts/amg.py`` reads it (``cv2.imread``); None if unreadable."""
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def run_amg(
    generate: Callable[[np.ndarray], List[Dict[str, Any]]],
    images: Sequence[PathLike],
    out_dir: PathLike,
    convert_to_rle: bool = False,
    progress: bool = True,
) -> AmgResult:
    """Segment every image not done yet and write its result.

    Arguments:
      generate: ``SamAutomaticMaskGenerator.generate``, taking an H x W x 3 uint8 RGB image; its
        ``output_mode`` must be ``coco_rle`` when ``convert_to_rle`` is set, else ``binary_mask``.
      images: the image files (:func:`find_images`).
      out_dir: the output folder (created).
      convert_to_rle: one ``<stem>.json`` per image instead of a folder of PNGs.
      progress: show a progress bar.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = AmgResult()
    bar = Progress(len(images), desc="amg", enabled=progress)
    try:
        for image in images:
            path = Path(image)
            if is_done(out, path, convert_to_rle):
                result.skipped.append(str(image))
            else:
                rgb = _read_rgb(path)
                if rgb is None:
                    result.failed.append((str(image), "could not be read as an image"))
                else:
                    try:
                        _write_result(generate(rgb), out, path, convert_to_rle)
                    except FileExistsError as e:
                        result.failed.append((str(image), str(e)))
                    else:
                        result.written.append(str(image))
            bar.update()
    finally:
        bar.close()
    return result


def build_mask_generator(
    model_type: str,
    checkpoint: Optional[PathLike] = None,
    sam_checkpoint: Optional[PathLike] = None,
    keep_ratio: Optional[float] = None,
    device: str = "auto",
    convert_to_rle: bool = False,
    generator: str = "fast",
    decoder_batch: Optional[int] = None,
    **amg_settings: Any,
) -> Any:
    """A mask generator on a registry model (plain SAM or big.LITTLE).

    Arguments:
      model_type: a registry name, or a whole model spec ``NAME[=CHECKPOINT][@KEEP_RATIO]``
        (the one form every tool takes; ``checkpoint`` and ``keep_ratio`` may give those parts).
      checkpoint: the model's checkpoint; for ``bl_*`` an official SAM file is inherited from.
      sam_checkpoint: an official SAM file a ``bl_*`` model inherits from.
      keep_ratio: the big.LITTLE keep ratio (the model's own when None).
      device: auto (CUDA when available), cpu, cuda or cuda:N.
      convert_to_rle: ``output_mode="coco_rle"`` (needs pycocotools), else ``binary_mask``.
      generator: ``fast`` (:class:`~biglittle_sam.mask_generator.FastAutomaticMaskGenerator`, the
        same masks as upstream's with a cheaper point loop) or ``upstream``
        (``segment_anything.SamAutomaticMaskGenerator`` itself).
      decoder_batch: ``fast`` only: points per mask-decoder call (None: 2 on a CPU, the whole
        ``points_per_batch`` elsewhere).
      amg_settings: :data:`AMG_SETTINGS` fields; the ones left out keep upstream's defaults.

    Raises:
      ValueError: an unknown model type, generator or AMG setting, a bad device, keep ratio or
        decoder batch (``CheckpointError`` is a ``ValueError`` too).
    """
    # segment_anything's generator module imports cv2 at import time; it stays lazy so that
    # `--help` and the core install work without the [amg] extra.
    from .mask_generator import mask_generator_class

    make = mask_generator_class(generator)
    if generator == "upstream" and decoder_batch is not None:
        raise ValueError("decoder_batch is a setting of the fast generator, not of upstream's")
    unknown = sorted(set(amg_settings) - set(AMG_SETTINGS))
    if unknown:
        raise ValueError(f"unknown AMG settings {unknown}; expected some of {list(AMG_SETTINGS)}")
    spec = spec_with(parse_model_spec(model_type), checkpoint, keep_ratio)
    target = resolve_device(device)
    sam = build_model_from_spec(spec, seed=0, sam_checkpoint=sam_checkpoint)
    if spec.keep_ratio is not None and spec.is_big_little:
        set_keep_ratio(sam, spec.keep_ratio)
    sam.to(target)
    output_mode = "coco_rle" if convert_to_rle else "binary_mask"
    if decoder_batch is not None:
        amg_settings["decoder_batch"] = decoder_batch
    return make(sam, output_mode=output_mode, **amg_settings)
