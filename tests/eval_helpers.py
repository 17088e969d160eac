"""Helpers of the evaluation and dataset tests: small files, JSON, and oracle models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from biglittle_sam.data import CocoDataset, EvalDataset
from biglittle_sam.data.shapes import ShapesDataset
from biglittle_sam.eval.predictor import PromptBatch

REPO = Path(__file__).resolve().parents[1]
# (width, height) of the generated test images: landscape, portrait and square, all tiny.
SMALL_SIZES = ((120, 96), (96, 128), (144, 112), (128, 128))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> Path:
    Path(path).write_text(json.dumps(data), encoding="utf-8")
    return Path(path)


def copy_coco(eval_shapes: ShapesDataset, dst: Path) -> Tuple[Path, Path]:
    """A private copy of the generated COCO annotations and images, to damage in a test."""
    import shutil

    images = dst / "val2017"
    shutil.copytree(eval_shapes.coco_images, images)
    ann = dst / "instances.json"
    shutil.copyfile(eval_shapes.coco_annotations, ann)
    return ann, images


def damage_boxes(data: Dict[str, Any]) -> Dict[Any, str]:
    """Damage the annotations of image 1 in every way eval must catch; returns {ann_id: what}."""
    img = next(i for i in data["images"] if i["id"] == 1)
    w = img["width"]
    anns = [a for a in data["annotations"] if a["image_id"] == 1 and not a["iscrowd"]]
    assert len(anns) >= 3
    anns[0]["bbox"] = [float("nan"), 2.0, 10.0, 10.0]
    anns[1]["bbox"] = [w + 5.0, 1.0, 10.0, 10.0]  # entirely right of the image
    x, y, bw, bh = anns[2]["bbox"]
    anns[2]["bbox"] = [x - 40.0, y, bw + 40.0 + w, bh]  # reaches past both sides
    extra = dict(anns[2], id=9001, bbox=[1.0, 1.0, 5.0, 5.0], segmentation=[])
    thin = dict(anns[2], id=9002, bbox=[1.0, 1.0, 5.0, 5.0], segmentation=[[1, 1, 5, 5]])
    flat = dict(anns[2], id=9003, bbox=[1.0, 1.0, 5.0, 5.0], segmentation=[[1, 1, 5, 1, 9, 1]])
    data["annotations"] += [extra, thin, flat]
    return {
        anns[0]["id"]: "bbox_not_finite",
        anns[1]["id"]: "bbox_outside_image",
        anns[2]["id"]: "bbox_off_image",
        9001: "empty_polygon",
        9002: "empty_polygon",
        9003: "empty_polygon",
    }


class GroundTruthPredictor:
    """An oracle model: every prompt gets its instance's ground-truth mask (predicted IoU 1).

    Box prompts are matched to the instance with exactly that box; point prompts to the instance
    named by ``ann_ids``. ``empty=True`` makes the opposite oracle: empty masks for everything.
    """

    def __init__(self, dataset: EvalDataset, empty: bool = False) -> None:
        self.empty = empty
        self.by_image: Dict[Any, List[Tuple[np.ndarray, Any, np.ndarray]]] = {}
        for i in range(len(dataset)):
            record = dataset.record(i)
            self.by_image[record.image_id] = [
                (
                    np.array(
                        [
                            inst.bbox[0],
                            inst.bbox[1],
                            inst.bbox[0] + inst.bbox[2],
                            inst.bbox[1] + inst.bbox[3],
                        ]
                    ),
                    inst.ann_id,
                    inst.mask(),
                )
                for inst in record.instances
            ]
        self.shape: Tuple[int, int] = (0, 0)

    def set_image(self, image: np.ndarray) -> float:
        self.shape = image.shape[:2]
        return 0.001

    def _mask(self, image_id: Any, ann_id: Any, box: Any) -> np.ndarray:
        for gt_box, gt_ann, mask in self.by_image[image_id]:
            if (box is not None and np.allclose(gt_box, box)) or (box is None and gt_ann == ann_id):
                return np.zeros_like(mask) if self.empty else mask
        raise KeyError(f"no instance for image {image_id}, annotation {ann_id}, box {box}")

    def predict(self, prompts: PromptBatch, mask_choice: str) -> Tuple[np.ndarray, np.ndarray]:
        masks = [
            self._mask(prompts.image_id, a, None if prompts.boxes is None else prompts.boxes[j])
            for j, a in enumerate(prompts.ann_ids)
        ]
        return np.stack(masks), np.ones(len(masks), dtype=np.float32)


def coco_dataset(eval_shapes: ShapesDataset, **kwargs: Any) -> CocoDataset:
    return CocoDataset(eval_shapes.coco_annotations, eval_shapes.coco_images, **kwargs)
