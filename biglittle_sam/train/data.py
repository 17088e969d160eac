"""Training data: images as SAM sees them, ground-truth masks at the decoder's resolution, and a
deterministic sharded sampler that can start anywhere in the data stream.

**Preprocessing** is exactly ``SamPredictor.set_image`` + ``Sam.preprocess``: ResizeLongestSide to
``img_size`` (PIL, uint8), normalization with SAM's pixel mean and std, zero padding at the bottom
and right. A teacher embedding cached from the same image therefore matches what SAM computes.

**Masks** are compared with the mask decoder's low-resolution output, 4g x 4g over the padded
input (256 x 256 for SAM's 1024 input: one mask pixel per 4 x 4 input pixels). Each ground-truth
mask is resized like the image, padded, and averaged over those cells: a soft target in [0, 1].

**The data stream** is the concatenation of one permutation of the dataset per epoch (seeded by
``seed + epoch``, as ``DistributedSampler`` does). Global micro-batch ``m`` is stream positions
``[m G, (m + 1) G)`` for G images per micro-batch over all ranks; rank ``r`` takes the contiguous
block ``[m G + r b, m G + (r + 1) b)`` of it (b = G / world size). So a run's global batches do not
depend on the number of processes, and the data position of a step is ``step x batch_size``: a
resumed run starts exactly where its checkpoint stopped. Every per-image random choice (instances,
prompts, flips) is seeded by the stream position, never by a global RNG or a worker.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..build_sam import PIXEL_MEAN, PIXEL_STD
from ..data.coco import CocoDataset
from ..data.folder import ImageFolder
from ..data.lvis import LvisDataset
from ..data.records import DatasetError, EvalDataset, ImageProblemError, ImageRecord
from ..data.sa1b import SA1BDataset
from ..fidelity import valid_embedding_size

__all__ = [
    "SOURCE_KINDS",
    "mask_stride",
    "build_image_source",
    "source_file_names",
    "image_key",
    "preprocess_image",
    "instance_targets",
    "TrainImages",
    "StreamSampler",
    "collate_items",
    "sample_seed",
]

SOURCE_KINDS = ("coco", "lvis", "sa1b", "folder")
EmbeddingLoader = Callable[[str], Tensor]


def build_image_source(
    images: str,
    dataset: Optional[str] = None,
    annotations: Optional[str] = None,
    limit: Optional[int] = None,
    need_masks: bool = False,
) -> EvalDataset:
    """The images (and annotations) to train on or to cache.

    Arguments:
      images: the image folder (COCO ``train2017/``, an SA-1B folder, or any folder of images).
      dataset: ``coco``, ``lvis``, ``sa1b`` or ``folder``; None: ``coco`` / ``lvis`` when
        ``annotations`` is given, ``sa1b`` when ``images`` holds ``sa_*.json``, else ``folder``.
      annotations: the COCO / LVIS instance json.
      limit: use only the first ``limit`` images.
      need_masks: the run needs ground-truth masks (a folder has none); COCO then lists only
        images with at least one non-crowd instance.

    Raises:
      DatasetError / ValueError: naming the path or flag and what was expected.
    """
    kind = dataset
    if kind is None:
        if annotations:
            kind = "lvis" if "lvis" in Path(annotations).name.lower() else "coco"
        elif Path(images).is_dir() and any(Path(images).glob("sa_*.json")):
            kind = "sa1b"
        else:
            kind = "folder"
    if kind not in SOURCE_KINDS:
        raise ValueError(f"dataset must be one of {SOURCE_KINDS}, got {kind!r}")
    if kind in ("coco", "lvis") and not annotations:
        raise ValueError(f"dataset '{kind}' needs --annotations (the instance json)")
    if kind == "folder" and need_masks:
        raise ValueError(
            f"{images}: ground-truth masks are needed, but a plain image folder has none; give "
            "--annotations (COCO / LVIS json) or an SA-1B folder (sa_*.jpg + sa_*.json)"
        )
    if kind == "coco":
        return CocoDataset(
            annotations,  # type: ignore[arg-type]
            images,
            include_crowd=False,
            require_instances=need_masks,
            limit=limit,
        )
    if kind == "lvis":
        return LvisDataset(
            annotations, images, require_instances=need_masks, limit=limit  # type: ignore[arg-type]
        )
    if kind == "sa1b":
        return SA1BDataset(images, limit=limit)
    return ImageFolder(images, limit=limit)


def source_file_names(source: EvalDataset) -> List[str]:
    """The file name of every image of ``source`` (as its records name them), cheaply.

    SA-1B names come from the file list, so no per-image json is read.
    """
    if isinstance(source, SA1BDataset):
        return [f"{stem}.jpg" for stem in source.stems]
    if isinstance(source, ImageFolder):
        return [p.name for p in source.files]
    return [source.record(i).file_name for i in range(len(source))]


def image_key(file_name: str) -> str:
    """A file-system-safe, unique, stable name for an image: ``<stem>-<sha1 of the name>``.

    The same file name gives the same key in every dataset format (``000000000139.jpg`` in a COCO
    folder and in a plain folder), so a cache made from one serves training on the other.
    """
    name = str(file_name).replace("\\", "/")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem)[:48] or "image"
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:12]
    return f"{stem}-{digest}"


def preprocess_image(image: np.ndarray, img_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """An H x W x 3 uint8 RGB image as SAM's encoder input.

    Returns:
      3 x S x S float32 (S = ``img_size``), normalized and zero-padded exactly as
      ``SamPredictor.set_image`` followed by ``Sam.preprocess`` produce it; and (h', w'), the
      size after ResizeLongestSide.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(img_size).apply_image(image)  # (h', w', 3) uint8
    h, w = int(resized.shape[0]), int(resized.shape[1])
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous().float()  # (3, h', w')
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    out = torch.zeros(3, img_size, img_size)
    out[:, :h, :w] = x  # (3, S, S), padding stays 0 as in Sam.preprocess
    return out, (h, w)


def mask_stride(img_size: int, grid: int) -> int:
    """Input pixels per side of one pixel of the decoder's low-resolution masks.

    SAM's decoder upscales the g x g embedding 4 times, so its masks are 4g x 4g over the S x S
    input: 4 pixels for a 16-pixel patch (SAM), 2 for an 8-pixel patch.
    """
    low = 4 * grid
    if img_size % low:
        raise ValueError(
            f"the input side {img_size} is not a multiple of the mask side {low} (4 x grid {grid})"
        )
    return img_size // low


def instance_targets(
    masks: Sequence[np.ndarray],
    bboxes: Sequence[Sequence[float]],
    original_size: Tuple[int, int],
    input_size: Tuple[int, int],
    img_size: int,
    stride: int,
) -> Tuple[Tensor, Tensor]:
    """Ground-truth masks at the decoder's resolution and boxes in the input frame.

    Arguments:
      masks: K masks, H x W bool, at the original image size.
      bboxes: K COCO boxes [x, y, w, h] in original pixels.
      original_size: (H, W).
      input_size: (h', w') after ResizeLongestSide.
      img_size: S, the padded input side.
      stride: input pixels per mask pixel (:func:`mask_stride`).

    Returns:
      masks: K x S/stride x S/stride float32 in [0, 1]: the share of each stride x stride input
        cell the object covers.
      boxes: K x 4 float32 (x0, y0, x1, y1) in input pixels.
    """
    import cv2

    h, w = input_size
    low = img_size // stride
    out = torch.zeros(len(masks), low, low)
    ph, pw = math.ceil(h / stride) * stride, math.ceil(w / stride) * stride
    for i, m in enumerate(masks):
        resized = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        padded = np.zeros((ph, pw), dtype=np.float32)
        padded[:h, :w] = resized  # (ph, pw)
        pooled = padded.reshape(ph // stride, stride, pw // stride, stride)
        pooled = pooled.mean(axis=(1, 3))  # (ph / stride, pw / stride)
        out[i, : pooled.shape[0], : pooled.shape[1]] = torch.from_numpy(pooled)
    sy, sx = h / original_size[0], w / original_size[1]
    boxes = torch.zeros(len(bboxes), 4)
    for i, (x, y, bw, bh) in enumerate(bboxes):
        boxes[i] = torch.tensor([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
    return out, boxes


def sample_seed(seed: int, position: int) -> int:
    """The seed of the image at stream ``position``: the same in every process and worker."""
    return int(np.random.default_rng([int(seed) & 0xFFFFFFFF, int(position)]).integers(2**62))


class TrainImages(Dataset):
    """Training items from any image source, keyed by ``(dataset index, stream position)``.

    An item is a dict of tensors: ``image`` (3 x S x S), ``input_size`` (2), ``valid`` (2: valid
    embedding rows and cols), ``ok`` (False for an unreadable image, whose loss is then left out),
    ``index``, ``position``, ``seed``; with masks, ``masks`` (K x 4g x 4g) and ``boxes`` (K x 4);
    with a teacher cache, ``teacher`` (C x g x g, fp16). ``problem`` names what was wrong with an
    unreadable image.
    """

    def __init__(
        self,
        source: EvalDataset,
        img_size: int,
        grid: int,
        seed: int,
        with_masks: bool = False,
        max_instances: int = 16,
        hflip: bool = False,
        strict: bool = False,
        indices: Optional[Sequence[int]] = None,
        embedding_loader: Optional[EmbeddingLoader] = None,
        embedding_shape: Optional[Tuple[int, int, int]] = None,
        keys: Optional[Sequence[str]] = None,
    ) -> None:
        """
        Arguments:
          source: a COCO / LVIS / SA-1B / folder dataset (``biglittle_sam.data``).
          img_size: S, the model's input side.
          grid: the embedding side (S / patch size).
          seed: the run's seed.
          with_masks: read ground-truth instances (needs annotations).
          max_instances: instances per image at most (a random subset, seeded per item).
          hflip: flip half of the images horizontally (not with cached embeddings).
          strict: an unreadable image raises DatasetError instead of being skipped and counted.
          indices: the source images to use (default all), in this order.
          embedding_loader: ``key -> C x g x g`` teacher embedding, for distillation.
          embedding_shape: (C, g, g), for the zero placeholder of an unreadable image.
          keys: the :func:`image_key` of every source image (computed when not given).
        """
        if hflip and embedding_loader is not None:
            raise ValueError(
                "hflip cannot be used with cached teacher embeddings (of the unflipped image)"
            )
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        self.source = source
        self.img_size = int(img_size)
        self.grid = int(grid)
        self.stride = mask_stride(self.img_size, self.grid)
        self.seed = int(seed)
        self.with_masks = with_masks
        self.max_instances = int(max_instances)
        self.hflip = hflip
        self.strict = strict
        self.indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
        if not self.indices:
            raise DatasetError(f"no images to train on in {source.describe()}")
        self.embedding_loader = embedding_loader
        self.embedding_shape = embedding_shape
        self.keys = list(keys) if keys is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def key_of(self, i: int) -> str:
        """The cache key of item ``i`` (position in :attr:`indices`)."""
        if self.keys is not None:
            return self.keys[self.indices[i]]
        return image_key(self.source.record(self.indices[i]).file_name)

    def _placeholder(self, i: int, position: int, problem: str) -> Dict[str, Any]:
        S, low = self.img_size, self.img_size // self.stride
        item: Dict[str, Any] = {
            "image": torch.zeros(3, S, S),
            "input_size": torch.tensor([S, S]),
            "valid": torch.tensor([self.grid, self.grid]),
            "ok": torch.tensor(False),
            "index": torch.tensor(self.indices[i]),
            "position": torch.tensor(position),
            "seed": torch.tensor(sample_seed(self.seed, position)),
            "problem": problem,
        }
        if self.with_masks:
            item["masks"] = torch.zeros(0, low, low)
            item["boxes"] = torch.zeros(0, 4)
        if self.embedding_loader is not None:
            shape = self.embedding_shape or (1, self.grid, self.grid)
            item["teacher"] = torch.zeros(shape, dtype=torch.float16)
        return item

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        i, position = int(key[0]), int(key[1])
        seed = sample_seed(self.seed, position)
        rng = np.random.default_rng(seed)
        record = self.source.record(self.indices[i])
        try:
            image = self.source.load_image(record)
        except ImageProblemError as e:
            if self.strict:
                raise DatasetError(
                    f"{e} (stopped by --strict; without it the image is skipped and counted)"
                ) from None
            return self._placeholder(i, position, str(e))
        flip = self.hflip and bool(rng.random() < 0.5)
        if flip:
            image = np.ascontiguousarray(image[:, ::-1])
        tensor, input_size = preprocess_image(image, self.img_size)
        item: Dict[str, Any] = {
            "image": tensor,
            "input_size": torch.tensor(input_size),
            "valid": torch.tensor(valid_embedding_size(input_size, self.img_size, self.grid)),
            "ok": torch.tensor(True),
            "index": torch.tensor(self.indices[i]),
            "position": torch.tensor(position),
            "seed": torch.tensor(seed),
            "problem": None,
        }
        if self.with_masks:
            masks, boxes = self._instances(record, image.shape[:2], input_size, rng, flip)
            item["masks"], item["boxes"] = masks, boxes
        if self.embedding_loader is not None:
            item["teacher"] = self.embedding_loader(self.key_of(i))
        return item

    def _instances(
        self,
        record: ImageRecord,
        original_size: Tuple[int, int],
        input_size: Tuple[int, int],
        rng: np.random.Generator,
        flip: bool,
    ) -> Tuple[Tensor, Tensor]:
        """Up to ``max_instances`` non-crowd instances that are still visible at mask resolution."""
        candidates = [inst for inst in record.instances if not inst.iscrowd]
        order = rng.permutation(len(candidates))
        targets: List[Tensor] = []
        boxes: List[Tensor] = []
        width = original_size[1]
        low = self.img_size // self.stride
        for j in order:
            inst = candidates[int(j)]
            mask = inst.mask()  # (H, W) bool
            x, y, w, h = inst.bbox
            if flip:
                mask = np.ascontiguousarray(mask[:, ::-1])
                x = width - x - w
            target, box = instance_targets(
                [mask], [(x, y, w, h)], original_size, input_size, self.img_size, self.stride
            )  # (1, 4g, 4g), (1, 4)
            if float(target.max()) < 0.5:
                continue  # smaller than one mask pixel at this resolution
            targets.append(target)
            boxes.append(box)
            if len(targets) == self.max_instances:
                break
        if not targets:
            return torch.zeros(0, low, low), torch.zeros(0, 4)
        return torch.cat(targets), torch.cat(boxes)  # (K, 4g, 4g), (K, 4)


def collate_items(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack items into a batch; instance tensors are padded to the batch's largest count.

    Returns tensors with a leading batch dimension B; ``masks`` B x K x 4g x 4g, ``boxes``
    B x K x 4 and ``instances`` B x K bool (True for real instances) when items have masks;
    ``problems``: the list of per-item problem strings (None when readable).
    """
    batch: Dict[str, Any] = {}
    for key in ("image", "input_size", "valid", "ok", "index", "position", "seed", "teacher"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    batch["problems"] = [it.get("problem") for it in items]
    if "masks" in items[0]:
        k = max(1, max(int(it["masks"].shape[0]) for it in items))
        low = items[0]["masks"].shape[-1]
        masks = torch.zeros(len(items), k, low, low)
        boxes = torch.zeros(len(items), k, 4)
        present = torch.zeros(len(items), k, dtype=torch.bool)
        for b, it in enumerate(items):
            n = int(it["masks"].shape[0])
            masks[b, :n] = it["masks"]  # (n, 4g, 4g) into the padded (K, 4g, 4g)
            boxes[b, :n] = it["boxes"]
            present[b, :n] = True
        batch["masks"], batch["boxes"], batch["instances"] = masks, boxes, present
    return batch


class StreamSampler(Sampler[Tuple[int, int]]):
    """Yields this rank's ``(item index, stream position)`` pairs, forever, from ``start``.

    See the module docstring: stream position p is item ``perm_e[p mod n]`` of epoch
    ``e = p // n``, with ``perm_e`` a permutation seeded by ``seed + e``.
    """

    def __init__(
        self,
        size: int,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        start: int = 0,
        shuffle: bool = True,
    ) -> None:
        """
        Arguments:
          size: n, items in the dataset.
          micro_batch: b, items per rank per micro-batch (G = b x world_size globally).
          rank, world_size: this process's place.
          seed: the run's seed.
          start: the first global stream position (a multiple of G).
          shuffle: permute each epoch (else the identity order).
        """
        if size < 1 or micro_batch < 1:
            raise ValueError(f"size and micro_batch must be >= 1, got {size}, {micro_batch}")
        self.size = size
        self.micro_batch = micro_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.global_batch = micro_batch * world_size
        if start % self.global_batch:
            raise ValueError(
                f"start {start} is not a multiple of the global micro-batch {self.global_batch}"
            )
        self.start = start
        self.shuffle = shuffle
        self._epoch = -1
        self._perm: Optional[Tensor] = None

    def index_at(self, position: int) -> int:
        """The dataset item at a global stream position."""
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.size, generator=gen)  # (n,)
            self._epoch = epoch
        return int(self._perm[offset])  # type: ignore[index]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        m = self.start // self.global_batch
        while True:
            first = m * self.global_batch + self.rank * self.micro_batch
            for p in range(first, first + self.micro_batch):
                yield self.index_at(p), p
            m += 1
