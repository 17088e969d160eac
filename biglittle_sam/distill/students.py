"""Dense students: a small plain encoder distilled from a SAM teacher exactly like a big.LITTLE one.

A user who wants SAM's masks at a fraction of the encoder's cost can also distil a small dense
encoder (MobileSAM: TinyViT; EdgeSAM: RepViT; or simply a narrower ViT). A dense student here is an
upstream ``Sam`` whose prompt encoder and mask decoder are the teacher's and whose image encoder is

- ``"vit"``: SAM's own ``ImageEncoderViT`` at a smaller ``SamViTConfig`` (narrower or shallower,
  ``experiments.proxy.matching.matched_vit``), or
- ``"timm"``: a timm TinyViT or RepViT trunk, sized down (:class:`TimmStudentSpec`), with the
  neck of :class:`TimmImageEncoder` mapping its features onto the teacher's embedding grid.

**Initialisation.** The encoder starts at random (segment_anything's and timm's own inits, drawn
from a seed). A dense student is narrower or shallower than its teacher, so it cannot inherit the
teacher's blocks the way big.LITTLE's P-blocks do; slicing the wider weights (channel pruning) is
another method (a pruned student) and would make the comparison about pruning, not about the
architecture at equal cost. The prompt encoder and mask decoder are the teacher's, as for the
big.LITTLE student.

**Distillation.** :func:`write_dense_student` saves the untrained student as a checkpoint; the
library's ``distill`` starts from it with ``student="dense"`` and ``init_checkpoint`` set to that
file: phase 1 trains the whole encoder (``train_parts="encoder"``; there are no frozen big blocks)
on the cached teacher embeddings, and phase 2 starts from phase 1's ``model.pth`` as for big.LITTLE.
Every checkpoint records the student under ``"dense_student"`` (``{"kind": "vit"}`` or the timm
spec), so :func:`load_student` rebuilds it: a timm student is stored as a state dict plus the spec
that rebuilds it, never as a pickled module, and loads with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..build_sam import build_sam_from_config, sam_from_loaded, swap_image_encoder
from ..checkpoint import (
    CheckpointError,
    check_version,
    load_state_dict_strict,
    save_model_checkpoint,
)
from ..config import BigLittleConfig, SamViTConfig, config_from_dict
from ..model_files import read_sam_checkpoint, resolve_checkpoint, resolve_loaded
from ..train.models import file_sha256

__all__ = [
    "DENSE",
    "DENSE_KEY",
    "TIMM_FAMILIES",
    "TimmFamily",
    "TimmImageEncoder",
    "TimmStudentSpec",
    "counted_macs",
    "dense_record",
    "dense_student",
    "load_student",
    "write_dense_student",
]

PathLike = Union[str, os.PathLike]
DENSE = "dense"  # DistillSettings.student of a dense student (it starts from init_checkpoint)
DENSE_KEY = "dense_student"  # the checkpoint entry that says how to rebuild a dense student
# The strides of the four stages of timm's TinyViT and RepViT (the stem takes 4).
STAGE_STRIDES = (4, 8, 16, 32)
# The fields of a plain SAM config that size its encoder's blocks, which a dense ViT student may
# choose; it shares every other one with its teacher (input, grid, embedding and decoder).
_ENCODER_OWN = frozenset(
    {"name", "embed_dim", "depth", "num_heads", "mlp_ratio", "window_size"}
    | {"global_attn_indexes", "qkv_bias", "use_rel_pos"}
)
_GEOMETRY = tuple(f.name for f in dataclasses.fields(SamViTConfig) if f.name not in _ENCODER_OWN)


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

    def __init__(self, spec: TimmStudentSpec) -> None:
        super().__init__()
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


def counted_macs(encoder: nn.Module, img_size: int) -> int:
    """MACs of one ``img_size`` image through ``encoder``: FlopCounterMode's FLOPs / 2.

    It counts matrix products and convolutions (attention included), not norms or activations:
    on a SAM ViT it equals ``flops.encoder_macs``'s total less its ``"norm"`` (the LayerNorms,
    1 to 2% of the total at the test and proxy sizes).
    """
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(torch.zeros(1, 3, img_size, img_size, device=device))
    finally:
        encoder.train(was_training)
    return int(counter.get_total_flops()) // 2


def dense_record(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``dense_student`` entry of a checkpoint's metadata, or None for another model."""
    record = meta.get(DENSE_KEY)
    return dict(record) if isinstance(record, Mapping) else None


def _check_geometry(student: Mapping[str, Any], teacher: SamViTConfig, what: str) -> None:
    """ValueError naming every geometry field where the student differs from the teacher."""
    want = dataclasses.asdict(teacher)
    wrong = [f"{k} {student[k]!r} (teacher {want[k]!r})" for k in student if student[k] != want[k]]
    if wrong:
        raise ValueError(f"{what} does not fit its teacher {teacher.name}: {', '.join(wrong)}")


def _timm_sam(config: SamViTConfig, spec: TimmStudentSpec) -> Sam:
    """A ``Sam`` of ``config``'s prompt encoder and decoder around a :class:`TimmImageEncoder`
    (the ViT built in passing is the smallest of the geometry, not the teacher's)."""
    stand_in = dataclasses.replace(
        config, embed_dim=config.num_heads, depth=1, global_attn_indexes=()
    )
    return swap_image_encoder(build_sam_from_config(stand_in), TimmImageEncoder(spec))


def dense_student(
    encoder: Union[SamViTConfig, TimmStudentSpec], teacher_checkpoint: PathLike, seed: int = 0
) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """An untrained dense student of the SAM in ``teacher_checkpoint``.

    Arguments:
      encoder: a plain ``SamViTConfig`` (a smaller ViT of the teacher's geometry) or a
        :class:`TimmStudentSpec`.
      teacher_checkpoint: the teacher; its prompt encoder and mask decoder are loaded.
      seed: draws the encoder's random weights.

    Returns:
      The student (eval mode), its config (for a timm student: the teacher's geometry, named after
      the spec) and its ``dense_student`` record.

    Raises:
      ValueError: a big.LITTLE config, or an encoder whose geometry differs from the teacher's.
    """
    teacher, state, _ = resolve_checkpoint(teacher_checkpoint)
    return _dense_student(encoder, teacher_checkpoint, teacher, state, seed)


def _dense_student(
    encoder: Union[SamViTConfig, TimmStudentSpec],
    teacher_checkpoint: PathLike,
    teacher: SamViTConfig,
    state: Dict[str, Any],
    seed: int,
) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """:func:`dense_student` of a teacher already read (its config and state dict)."""
    if isinstance(encoder, BigLittleConfig):
        raise ValueError(f"{encoder.name} is big.LITTLE; a dense student has a plain encoder")
    if isinstance(encoder, TimmStudentSpec):
        fields = {k: getattr(encoder, k) for k in ("img_size", "patch_size", "out_chans")}
        _check_geometry(fields, teacher, f"timm student {encoder.name}")
        config = dataclasses.replace(teacher, name=encoder.name)
        record = encoder.record()
    else:
        _check_geometry({k: getattr(encoder, k) for k in _GEOMETRY}, teacher, encoder.name)
        config, record = encoder, {"kind": "vit"}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(encoder, TimmStudentSpec):
            sam = _timm_sam(config, encoder)
        else:
            sam = build_sam_from_config(config)
    heads = {k: v for k, v in state.items() if not k.startswith("image_encoder.")}
    load_state_dict_strict(
        sam, heads, teacher_checkpoint, config.name, allowed_missing=("image_encoder.",)
    )
    return sam.eval(), config, record


def write_dense_student(
    path: PathLike,
    encoder: Union[SamViTConfig, TimmStudentSpec],
    teacher_checkpoint: PathLike,
    seed: int = 0,
) -> Path:
    """Save :func:`dense_student` as the ``init_checkpoint`` of a ``student="dense"`` distillation
    (it records the teacher's tag and SHA-256, which the cache is checked against)."""
    teacher, state, _ = resolve_checkpoint(teacher_checkpoint)
    sam, config, record = _dense_student(encoder, teacher_checkpoint, teacher, state, seed)
    return save_model_checkpoint(
        path,
        sam,
        config,
        teacher=f"{teacher.name}:{Path(teacher_checkpoint).name}",
        teacher_sha256=file_sha256(teacher_checkpoint),
        note="a dense student before distillation",
        **{DENSE_KEY: record},
    )


def _stored_geometry(meta: Mapping[str, Any], path: PathLike) -> SamViTConfig:
    """The config a timm student's checkpoint stores (the teacher's geometry and decoder).

    Not ``checkpoint_config``: its parameter floor is a ViT encoder's, which a timm student does
    not have; the strict load against the rebuilt model checks the weights instead.
    """
    check_version(meta, path)
    data = meta.get("config")
    if data is None:
        raise CheckpointError(f"{path}: a timm student without its stored config")
    try:
        return config_from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored config is not valid: {e}") from None


def load_student(path: PathLike) -> Tuple[Sam, SamViTConfig, Dict[str, Any]]:
    """Any student checkpoint as a ``Sam`` in eval mode (strict load, ``weights_only=True``).

    A timm student is rebuilt from its ``dense_student`` record; anything else (a big.LITTLE or a
    dense ViT student, a plain SAM) goes through ``build_sam.load_sam``.

    Returns:
      The model, its config and the file's metadata.

    Raises:
      CheckpointError: unreadable, a bad record, or weights that do not fit the record.
    """
    state, meta = read_sam_checkpoint(path)
    record = dense_record(meta)
    if record is None or record.get("kind") != "timm":
        config = resolve_loaded(state, meta, path)
        return sam_from_loaded(config, state, meta, path), config, meta
    spec = TimmStudentSpec.from_record(record, path)
    config = _stored_geometry(meta, path)
    sam = _timm_sam(config, spec)
    load_state_dict_strict(sam, state, path, config.name)
    return sam.eval(), config, meta
