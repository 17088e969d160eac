"""transformers' ``SamModel`` with the big.LITTLE image encoder: :class:`BigLittleSamModel`.

It is ``SamModel`` (prompt encoder, mask decoder, ``get_image_embeddings``, the processor and the
mask-generation pipeline are transformers' own) whose ``vision_encoder`` is
:class:`BigLittleSamVisionEncoder`: this project's :class:`~biglittle_sam.modeling.
ImageEncoderBigLittle` behind transformers' vision-encoder interface (``SamVisionEncoderOutput``,
``output_hidden_states``). :func:`register` makes ``AutoConfig``, ``AutoModel``,
``AutoModelForMaskGeneration``, ``AutoProcessor`` and ``AutoImageProcessor`` know the
``"biglittle_sam"`` model type, so a saved folder loads with no ``trust_remote_code``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForMaskGeneration,
    AutoProcessor,
    SamImageProcessor,
    SamModel,
    SamProcessor,
)
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPositionalEmbedding,
    SamPreTrainedModel,
    SamPromptEncoder,
    SamVisionEncoderOutput,
)
from transformers.utils import logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..checkpoint import CheckpointError
from ..config import validate_keep_ratio
from ..modeling import ImageEncoderBigLittle
from ..modeling.blocks import BigLittleBlock
from .configuration import BigLittleSamConfig, BigLittleSamVisionConfig, biglittle_config_from_hf

__all__ = ["BigLittleSamModel", "BigLittleSamVisionEncoder", "refuse_partial_load", "register"]

logger = logging.get_logger(__name__)

# Set on every module of the big.LITTLE encoder: it initializes itself (E-blocks start with gamma
# 0, routers with their own init), so transformers' generic initialization must not touch it.
_OWN_INIT = "_biglittle_own_init"


class _BigLittlePreTrained(SamPreTrainedModel):
    """``SamPreTrainedModel`` that leaves the big.LITTLE encoder's own initialization alone."""

    _no_split_modules = ["BigLittleBlock", "TrainingFreeBlock", "SamTwoWayAttentionBlock"]

    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, _OWN_INIT, False):
            return
        super()._init_weights(module)


class BigLittleSamVisionEncoder(_BigLittlePreTrained):
    """transformers' vision-encoder interface over :class:`ImageEncoderBigLittle`.

    ``forward(pixel_values)`` (B x 3 x S x S, as ``SamProcessor`` makes them) returns a
    ``SamVisionEncoderOutput`` whose ``last_hidden_state`` is B x out x S/16 x S/16; with
    ``output_hidden_states`` its ``hidden_states`` are the B x S/16 x S/16 x C tokens entering the
    first layer and leaving each layer, as ``SamVisionEncoder``'s. Attention maps are not recorded
    (semi-cross attention's are rN x N, not N x N): ``attentions`` stays None.
    """

    config_class = BigLittleSamVisionConfig
    _can_record_outputs = {"hidden_states": OutputRecorder(BigLittleBlock, index=0)}

    def __init__(self, config: BigLittleSamVisionConfig) -> None:
        super().__init__(config)
        self.image_encoder = ImageEncoderBigLittle(biglittle_config_from_hf(config))
        for module in self.image_encoder.modules():
            setattr(module, _OWN_INIT, True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.image_encoder.patch_embed

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: Optional[torch.Tensor] = None,
        keep_ratio: Optional[float] = None,
        **kwargs: Any,
    ) -> SamVisionEncoderOutput:
        """pixel_values: B x 3 x S x S -> ``SamVisionEncoderOutput`` (B x out x S/16 x S/16).

        ``keep_ratio``: this call's share of tokens through the big blocks, in (0, 1]; None: the
        model's (:attr:`BigLittleSamModel.keep_ratio`).
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if kwargs.get("output_attentions"):
            logger.warning_once(
                "output_attentions: the big.LITTLE image encoder records no attention maps "
                "(vision_attentions is None); the mask decoder's are recorded as usual"
            )
        encoder = self.image_encoder
        context = nullcontext() if keep_ratio is None else encoder.keep_ratio_context(keep_ratio)
        with context:
            embeddings = encoder(pixel_values)  # (B, out, S/16, S/16)
        return SamVisionEncoderOutput(last_hidden_state=embeddings)


class BigLittleSamModel(_BigLittlePreTrained, SamModel):
    """transformers' ``SamModel`` with the big.LITTLE image encoder.

    Everything but ``vision_encoder`` is ``SamModel``'s. ``forward`` and ``get_image_embeddings``
    also take ``keep_ratio=`` for one call; :attr:`keep_ratio` sets the model's (and its config's,
    so ``save_pretrained`` keeps it); :meth:`keep_ratio_context` sets it for the calling thread,
    for code that does not pass arguments through (the mask-generation pipeline).

    ``from_pretrained`` is strict: a file with missing, unexpected or misshapen weights raises
    ``CheckpointError`` naming them (transformers would initialize them at random and only warn).
    """

    config_class = BigLittleSamConfig

    def __init__(self, config: BigLittleSamConfig) -> None:
        SamPreTrainedModel.__init__(self, config)
        self.shared_image_embedding = SamPositionalEmbedding(config.vision_config)
        self.vision_encoder = BigLittleSamVisionEncoder(config.vision_config)
        self.prompt_encoder = SamPromptEncoder(config)
        # As SamModel: the decoder is no PreTrainedModel, so it takes the attention backend here.
        config.mask_decoder_config._attn_implementation = config._attn_implementation
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        self.post_init()

    @property
    def image_encoder(self) -> ImageEncoderBigLittle:
        """The big.LITTLE encoder itself (this project's module, segment_anything's names)."""
        return self.vision_encoder.image_encoder

    @property
    def keep_ratio(self) -> float:
        """The share of tokens through the big blocks, in (0, 1] (this thread's, in a context)."""
        return self.image_encoder.keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        value = validate_keep_ratio(value)
        self.image_encoder.keep_ratio = value
        biglittle = dict(self.config.vision_config.biglittle or {}, keep_ratio=value)
        self.config.vision_config.biglittle = biglittle

    @contextmanager
    def keep_ratio_context(self, keep_ratio: float) -> Iterator[None]:
        """Run this thread's forward passes at ``keep_ratio`` inside the ``with`` block."""
        with self.image_encoder.keep_ratio_context(keep_ratio):
            yield

    def forward(self, *args: Any, keep_ratio: Optional[float] = None, **kwargs: Any) -> Any:
        """``SamModel.forward``; ``keep_ratio`` runs this call at that ratio."""
        if keep_ratio is None:
            return super().forward(*args, **kwargs)
        with self.keep_ratio_context(keep_ratio):
            return super().forward(*args, **kwargs)

    @torch.no_grad()
    def get_image_embeddings(
        self, pixel_values: torch.Tensor, keep_ratio: Optional[float] = None, **kwargs: Any
    ) -> torch.Tensor:
        """B x 3 x S x S -> B x out x S/16 x S/16, at ``keep_ratio`` if given."""
        if keep_ratio is None:
            return super().get_image_embeddings(pixel_values, **kwargs)
        with self.keep_ratio_context(keep_ratio):
            return super().get_image_embeddings(pixel_values, **kwargs)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``from_pretrained``, refusing a file whose weights do not all fit."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        refuse_partial_load(info, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return (model, info) if want_info else model


_STOCK_HINT = ". A stock SAM model or folder: biglittle_sam.hf.to_biglittle(name_or_model)"


def refuse_partial_load(
    info: Dict[str, Any],
    source: Any,
    what: str = "this big.LITTLE SamModel",
    hint: str = _STOCK_HINT,
) -> None:
    """Raise ``CheckpointError`` naming the weights ``from_pretrained`` could not load into
    ``what`` (its ``output_loading_info``), followed by ``hint``."""
    problems: List[str] = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind) or ())
        if keys:
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            problems.append(f"{kind.replace('_', ' ')} ({len(keys)}): {', '.join(keys[:6])}{more}")
    if problems:
        raise CheckpointError(
            f"{source}: its weights do not fit {what} (none are left at random): "
            + "; ".join(problems)
            + hint
        )


def register() -> None:
    """Make transformers' auto classes know ``model_type="biglittle_sam"`` (idempotent)."""
    AutoConfig.register(BigLittleSamConfig.model_type, BigLittleSamConfig, exist_ok=True)
    AutoConfig.register(
        BigLittleSamVisionConfig.model_type, BigLittleSamVisionConfig, exist_ok=True
    )
    AutoModel.register(BigLittleSamConfig, BigLittleSamModel, exist_ok=True)
    AutoModelForMaskGeneration.register(BigLittleSamConfig, BigLittleSamModel, exist_ok=True)
    AutoProcessor.register(BigLittleSamConfig, SamProcessor, exist_ok=True)
    AutoImageProcessor.register(
        BigLittleSamConfig,
        image_processor_classes={"torchvision": SamImageProcessor},
        exist_ok=True,
    )
