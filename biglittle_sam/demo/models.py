"""The models the demo serves: the built-in models (the proxy benchmark's teacher and student,
toys trained on synthetic shapes) and checkpoints from the command line."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from segment_anything.modeling import Sam

from ..build_sam import get_keep_ratio, load_sam, model_config, sam_model_registry
from ..checkpoint import CheckpointError
from ..config import BIGLITTLE_CONFIGS, BigLittleConfig, SamViTConfig
from ..flops import encoder_gmacs
from ..model_spec import MODEL_NAMES
from ..model_spec import split_named_path as parse_checkpoint_arg
from ..modeling import ImageEncoderBigLittle

__all__ = [
    "ASSETS_DIR",
    "DemoModel",
    "default_model_paths",
    "load_demo_model",
    "load_models",
    "parse_checkpoint_arg",
    "training_free_twin",
    "teacher_config",
]

PathLike = Union[str, os.PathLike]
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def teacher_config(config: SamViTConfig) -> SamViTConfig:
    """The plain SAM config of the same size: the config itself, or a big.LITTLE config's teacher.

    A big.LITTLE model's big blocks are shaped exactly like its teacher's, so the teacher is
    rebuilt from those fields (this also covers custom-size teachers that are not in the registry).
    """
    if not isinstance(config, BigLittleConfig):
        return config
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(SamViTConfig)}
    fields["name"] = config.teacher
    return SamViTConfig(**fields)


ENCODER_FIELDS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "window_size",
    "global_attn_indexes",
    "out_chans",
)


def _encoder_shape(config: SamViTConfig) -> Tuple[object, ...]:
    return tuple(getattr(config, f) for f in ENCODER_FIELDS)


@dataclass
class DemoModel:
    """One servable model.

    Attributes:
      name: shown in the model menu; unique.
      sam: the model, in eval mode, on its device.
      source: where it came from (a path or "built-in").
      builtin: one of the models shipped in ``biglittle_sam/assets``.
    """

    name: str
    sam: Sam
    source: str = "built-in"
    builtin: bool = False

    @property
    def is_biglittle(self) -> bool:
        return isinstance(self.sam.image_encoder, ImageEncoderBigLittle)

    @property
    def config(self) -> SamViTConfig:
        return model_config(self.sam)

    @property
    def default_keep_ratio(self) -> float:
        return get_keep_ratio(self.sam)

    @property
    def teacher(self) -> SamViTConfig:
        """Config of the plain SAM encoder of the same size (the model's own for plain SAM)."""
        return teacher_config(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    @property
    def everything_thresholds(self) -> Tuple[float, float]:
        """Default (min predicted IoU, min stability score) for segment everything.

        SAM's own model is confident (``SamAutomaticMaskGenerator`` keeps 0.88 / 0.95); the
        demo uses 0.8 / 0.9 for checkpoints. The built-in models' IoU head is low: over the
        examples' 16 x 16-point masks, its predictions have a median of 0.15 and a 99th
        percentile of 0.62-0.72, so SAM's filters would keep almost none of them: 0.3 / 0.7.
        """
        return (0.3, 0.7) if self.builtin else (0.8, 0.9)

    def gmacs(self, keep_ratio: float) -> float:
        """Encoder GMACs per image at ``keep_ratio`` (ignored for plain SAM)."""
        return encoder_gmacs(self.config, keep_ratio if self.is_biglittle else None)

    def teacher_gmacs(self) -> float:
        return encoder_gmacs(self.teacher)

    def same_size_as(self, other: "DemoModel") -> bool:
        """True when ``other`` is a plain SAM shaped exactly like this model's teacher."""
        if other.is_biglittle:
            return False
        # Only the encoder's shape matters (a plain SAM's config is recovered from its encoder, so
        # decoder fields may differ from the stored ones).
        return _encoder_shape(self.teacher) == _encoder_shape(other.config)

    def describe(self) -> str:
        kind = "big.LITTLE" if self.is_biglittle else "plain SAM"
        cfg = self.config
        return f"{kind}, {cfg.embed_dim}-wide x {cfg.depth} blocks at {cfg.img_size} px"


def load_demo_model(
    path: PathLike,
    name: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    model_type: Optional[str] = None,
) -> DemoModel:
    """Load a SAM or big.LITTLE checkpoint, whichever it is (``build_sam.load_sam``).

    Checkpoints in this project's format store their config and rebuild exactly; other files (the
    official SAM ones) are recognised from their weights, or built as ``model_type`` (a registry
    name) when given.

    Raises:
      CheckpointError: the file is missing, unreadable, or not a SAM / big.LITTLE checkpoint.
    """
    sam, _, _ = load_sam(Path(path), model_type)
    sam.to(device)
    return DemoModel(name or Path(path).stem, sam, str(path))


def default_model_paths(assets: Path = ASSETS_DIR) -> List[Path]:
    """The built-in models: every ``*.pth`` shipped in ``biglittle_sam/assets``."""
    if not assets.is_dir():
        return []
    return sorted(p for p in assets.glob("*.pth") if p.is_file())


def _unique(name: str, taken: Dict[str, DemoModel]) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name} ({i})" in taken:
        i += 1
    return f"{name} ({i})"


def training_free_twin(model: DemoModel) -> Optional[DemoModel]:
    """A plain SAM's file in the training-free mode (``bl_*``: SAM's blocks for the chosen tokens,
    no LITTLE blocks, no training), or None for a big.LITTLE model or a size with no bl_* twin."""
    if model.is_biglittle:
        return None
    config = model.config
    for name, twin in BIGLITTLE_CONFIGS.items():
        # Same width and heads; the depth (and image size) must match too for an official file,
        # while a project file of the twin's teacher lends it every size (the proxy teacher: 6
        # layers at 96 px), so the registry decides by loading it.
        if (twin.embed_dim, twin.num_heads) != (config.embed_dim, config.num_heads):
            continue
        if twin.little_mlp_ratio != BigLittleConfig.little_mlp_ratio:  # not bl_b_lite
            continue
        try:
            sam = sam_model_registry[name](checkpoint=model.source, training_free=True)
        except CheckpointError:
            continue
        sam.to(model.device)
        twin_model = DemoModel(f"{model.name}, training-free", sam, model.source)
        twin_model.builtin = model.builtin
        return twin_model
    return None


def load_models(
    checkpoints: Sequence[str] = (),
    sam_checkpoints: Sequence[str] = (),
    device: Union[str, torch.device] = "cpu",
    builtin: bool = True,
    assets: Path = ASSETS_DIR,
    training_free: bool = False,
) -> Dict[str, DemoModel]:
    """Everything the demo serves, by menu name: the built-in models first, then the given ones.

    Arguments:
      checkpoints: ``[NAME=]PATH`` of big.LITTLE (or plain SAM) checkpoints; NAME may be a registry
        name (``bl_b``) to say which model a bare state dict is for.
      sam_checkpoints: official SAM checkpoints (their size is recognised from the weights).
      training_free: also serve every plain SAM in the training-free mode
        (:func:`training_free_twin`), next to it in the menu.
    """
    models: Dict[str, DemoModel] = {}
    if builtin:
        for path in default_model_paths(assets):
            model = load_demo_model(path, f"{path.stem} (built-in)", device)
            model.builtin = True
            models[_unique(model.name, models)] = model
    for text in list(sam_checkpoints) + list(checkpoints):
        name, path = parse_checkpoint_arg(text)
        model_type = name if name in MODEL_NAMES else None
        model = load_demo_model(path, name, device, model_type)
        model.name = _unique(model.name, models)
        models[model.name] = model
    if training_free:
        for model in list(models.values()):
            twin = training_free_twin(model)
            if twin is not None:
                models[_unique(twin.name, models)] = twin
    return models
