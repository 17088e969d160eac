"""Evaluation datasets: COCO, LVIS, SA-1B, plain image folders, and a synthetic shapes generator.

Every loader keeps only annotations in memory and reads pixels one image at a time. pycocotools is
imported only where a segmentation is turned into a mask.
"""

from .coco import CocoDataset, load_annotation_json
from .errors import DatasetError
from .folder import ImageFolder
from .lvis import LvisDataset
from .masks import decode_rle, encode_mask, segmentation_problem, segmentation_to_rle
from .records import EvalDataset, ImageProblem, ImageProblemError, ImageRecord, Instance, read_image
from .sa1b import SA1BDataset, read_image_list
from .shapes import ShapesConfig, ShapesDataset, make_shapes_dataset, render_shapes_image

__all__ = [
    "CocoDataset",
    "DatasetError",
    "EvalDataset",
    "ImageFolder",
    "ImageProblem",
    "ImageProblemError",
    "ImageRecord",
    "Instance",
    "LvisDataset",
    "SA1BDataset",
    "ShapesConfig",
    "ShapesDataset",
    "decode_rle",
    "encode_mask",
    "load_annotation_json",
    "make_shapes_dataset",
    "read_image",
    "read_image_list",
    "render_shapes_image",
    "segmentation_problem",
    "segmentation_to_rle",
]
