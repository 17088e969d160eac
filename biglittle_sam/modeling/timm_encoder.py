"""A timm TinyViT or RepViT trunk behind a neck that puts its features on a SAM teacher's
embedding grid: the image encoder of a timm dense student (``biglittle_sam.distill.students``).

timm is imported only when such an encoder is built (it is in the ``[train]`` and ``[bench]``
extras), so this module and its spec load without it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

from ..checkpoint import CheckpointError

__all__ = ["STAGE_STRIDES", "TIMM_FAMILIES", "TimmFamily", "TimmImageEncoder", "TimmStudentSpec"]

PathLike = Union[str, os.PathLike]
DENSE_KEY = "dense_student"  # the checkpoint entry that says how to rebuild a dense student
# The strides of the four stages of timm's TinyViT and RepViT (the stem takes 4).
STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class TimmFamily:
    """A timm model family, sized by a width unit ``u`` and blocks per stage.

    Stage widths are ``u * stage_widths``; the registered model is ``u = base_width`` at
    ``base_depths``. TinyViT keeps its head count per stage (head width ``u``) and scales its
    attention windows with the image (``window_sizes`` are its windows at 224 px).
    """

    timm_name: str  # the registered timm model whose class and defaults the family builds
    paper: str  # who distilled SAM into it at full size
    base_width: int
    stage_widths: Tuple[int, ...]
    base_depths: Tuple[int, ...]
    heads: Tuple[int, ...] = ()  # TinyViT only
    window_sizes: Tuple[int, ...] = ()  # TinyViT only, at 224 px

    def kwargs(self, width: int, depths: Tuple[int, ...], img_size: int) -> Dict[str, Any]:
        """``timm.create_model`` arguments of the family at width unit ``width``."""
        dims = tuple(width * m for m in self.stage_widths)
        if not self.heads:  # RepViT
            return {"embed_dim": dims, "depth": depths}
        windows = [max(1, round(w * img_size / 224)) for w in self.window_sizes]
        return {
            "embed_dims": dims,
            "depths": depths,
            "num_heads": self.heads,
            "window_sizes": windows,
            "drop_path_rate": 0.0,
        }


TIMM_FAMILIES: Dict[str, TimmFamily] = {
    "tiny_vit": TimmFamily(
        "tiny_vit_5m_224",
        "MobileSAM (TinyViT-5M)",
        32,
        (2, 4, 5, 10),
        (2, 2, 6, 2),
        heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
    ),
    "repvit": TimmFamily("repvit_m1", "EdgeSAM (RepViT-M1)", 48, (1, 2, 4, 8), (2, 2, 14, 2)),
}


@dataclass(frozen=True)
class TimmStudentSpec:
    """A sized-down timm encoder at a teacher's geometry: everything that rebuilds it."""

    family: str  # a key of TIMM_FAMILIES
    width: int  # the width unit u (stage widths u * family.stage_widths)
    depths: Tuple[int, ...]  # blocks per stage (4 stages)
    img_size: int  # the teacher's input side
    patch_size: int  # the teacher's patch: the embedding grid is img_size / patch_size
    out_chans: int  # the teacher's embedding channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        if self.family not in TIMM_FAMILIES:
            raise ValueError(f"unknown timm family {self.family!r}; expected {list(TIMM_FAMILIES)}")
        if self.width < 1 or len(self.depths) != 4 or min(self.depths) < 1:
            raise ValueError(
                f"a {self.family} student needs width >= 1 and 4 stages of >= 1 block, got width "
                f"{self.width}, depths {self.depths}"
            )
        if self.patch_size not in STAGE_STRIDES or self.img_size % self.patch_size:
            raise ValueError(
                f"a timm student aligns one of its stage strides {STAGE_STRIDES} with the "
                f"teacher's patch; patch {self.patch_size} at {self.img_size} px has none"
            )

    @property
    def name(self) -> str:
        depths = "".join(str(d) for d in self.depths)
        return f"{self.family}_w{self.width}_d{depths}"

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def record(self) -> Dict[str, Any]:
        """The checkpoint entry (plain values) that rebuilds this encoder."""
        return {"kind": "timm", **dataclasses.asdict(self), "depths": list(self.depths)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], path: PathLike) -> "TimmStudentSpec":
        """The spec a checkpoint records; CheckpointError naming the file for a bad record."""
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in record.items() if k in fields})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: a bad '{DENSE_KEY}' record {dict(record)}: {e}")


class TimmImageEncoder(nn.Module):
    """A timm trunk and a neck that put its features on the teacher's embedding grid.

    **Stride alignment.** The trunk's four stages run at strides 4, 8, 16 and 32. The neck takes
    the stage whose stride is the teacher's patch size p (the anchor) and every deeper stage; each
    goes through a 1x1 convolution to ``out_chans`` and is upsampled (bilinear) to the anchor's
    grid, g = img_size / p, and the sum goes through the rest of SAM's neck (LayerNorm2d, 3x3
    convolution, LayerNorm2d). This is EdgeSAM's alignment at full size (RepViT's stride-32
    features upsampled onto its stride-16 ones, 64 x 64 at 1024 px); MobileSAM instead removes
    TinyViT's last downsampling so that its last stage stays at stride 16.

    Arguments of ``forward``: x, B x 3 x S x S (normalized and padded by ``Sam.preprocess``).
    Returns B x out_chans x g x g, as SAM's encoder.
    """

    def __init__(self, spec: TimmStudentSpec, config: Optional[Any] = None) -> None:
        """
        Arguments:
          spec: the trunk's family, width and depths, and the teacher's geometry.
          config: the student's ``SamViTConfig`` (the teacher's geometry and decoder, named after
            the spec), kept as ``self.config`` for ``model_config``; None when built alone.
        """
        super().__init__()
        self.config = config
        try:
            import timm  # in the [train] and [bench] extras; needed only by timm students
        except ImportError:
            raise RuntimeError("a timm student needs timm: pip install 'timm>=1.0'") from None
        family = TIMM_FAMILIES[spec.family]
        taken = tuple(i for i, s in enumerate(STAGE_STRIDES) if s >= spec.patch_size)
        self.spec = spec
        self.img_size = spec.img_size
        self.patch_size = spec.patch_size
        self.out_chans = spec.out_chans
        self.trunk = timm.create_model(
            family.timm_name,
            pretrained=False,
            features_only=True,
            out_indices=taken,
            **family.kwargs(spec.width, spec.depths, spec.img_size),
        )
        channels = self.trunk.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, spec.out_chans, 1, bias=False) for c in channels)
        self.neck = nn.Sequential(
            LayerNorm2d(spec.out_chans),
            nn.Conv2d(spec.out_chans, spec.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(spec.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        g = self.spec.grid
        fused: Optional[Tensor] = None
        for lateral, features in zip(self.lateral, self.trunk(x)):  # (B, c_i, S/s_i, S/s_i)
            y = lateral(features)  # (B, out, S/s_i, S/s_i)
            if y.shape[-1] != g:
                y = F.interpolate(y, size=(g, g), mode="bilinear", align_corners=False)
            fused = y if fused is None else fused + y  # (B, out, g, g)
        assert fused is not None  # at least the anchor stage (checked by the spec)
        return self.neck(fused)  # (B, out, g, g)
