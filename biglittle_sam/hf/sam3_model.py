"""SAM 3's big.LITTLE backbone for transformers: :class:`BigLittleSam3ViTModel`.

It is transformers' ``Sam3ViTModel`` (patch and position embedding, ``layer_norm``, 32 layers,
``last_hidden_state`` B x HW x C) whose layers are :class:`~.sam3_layer.BigLittleSam3ViTLayer`:
SAM 3's layers with the same parameter names, so SAM 3's weights load 1:1, routed in the
training-free mode below keep ratio 1. :func:`register_sam3` makes ``AutoConfig`` / ``AutoModel``
know ``model_type="biglittle_sam3_vit"``, so ``Sam3VisionModel`` (``AutoModel.from_config`` of its
``backbone_config``) builds it, and a saved ``Sam3Model`` / ``Sam3TrackerModel`` folder loads with
it and no ``trust_remote_code``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, Sam3ViTModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.sam3.modeling_sam3 import Sam3PreTrainedModel, Sam3ViTEmbeddings
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ..config import validate_keep_ratio
from ..modeling.attention import Attention
from ..modeling.little_block import LittleBlock
from ..modeling.thread_ratio import thread_keep_ratio, thread_keep_ratio_context
from .sam3_config import BigLittleSam3ViTConfig
from .sam3_layer import BigLittleSam3ViTLayer

__all__ = ["BigLittleSam3ViTModel", "register_sam3"]


class BigLittleSam3ViTModel(Sam3ViTModel):
    """``Sam3ViTModel`` with big.LITTLE routing at :attr:`keep_ratio`: training-free, or with
    E-blocks and routers (``layers.i.little.*``, ``layers.i.router.*``) in the LITTLE-block form.

    ``forward(pixel_values)`` (B x 3 x S x S) returns ``BaseModelOutput`` with
    ``last_hidden_state`` B x (S/p)^2 x C, as ``Sam3ViTModel``'s; ``hidden_states`` are recorded as
    there. Attention maps are recorded for the layers that run densely only (a routed layer's are
    k x M, not M x M). ``keep_ratio=`` runs one call at that ratio.
    """

    config_class = BigLittleSam3ViTConfig
    config: BigLittleSam3ViTConfig

    def __init__(self, config: BigLittleSam3ViTConfig) -> None:
        Sam3PreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = Sam3ViTEmbeddings(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        routed = config.routed_layers()
        self.layers = nn.ModuleList(
            BigLittleSam3ViTLayer(
                config,
                window_size=0 if i in config.global_attn_indexes else config.window_size,
                routed=routed[i],
            )
            for i in range(config.num_hidden_layers)
        )
        self._keep_ratio = float(config.biglittle["keep_ratio"])
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """SAM 3's initialization, plus the parameters of the LITTLE-block form that it does not
        know: the E-block's ``gamma`` and relative-position tables start at zero (as SAM 1's), so
        an E-block left out of a checkpoint changes nothing; its Linear layers and the router's
        take transformers' normal(0, initializer_range) with zero biases."""
        super()._init_weights(module)
        if isinstance(module, LittleBlock):
            init.zeros_(module.gamma)
        elif isinstance(module, Attention) and module.use_rel_pos:
            init.zeros_(module.rel_pos_h)
            init.zeros_(module.rel_pos_w)

    @property
    def keep_ratio(self) -> float:
        """The share of each window's tokens through SAM 3's layers, in (0, 1] (this thread's,
        inside :meth:`keep_ratio_context`). Setting it also sets the config's, so
        ``save_pretrained`` keeps it."""
        override = thread_keep_ratio(self)
        return self._keep_ratio if override is None else override

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        self._keep_ratio = validate_keep_ratio(value)
        self.config.biglittle = dict(self.config.biglittle or {}, keep_ratio=self._keep_ratio)

    @contextmanager
    def keep_ratio_context(self, keep_ratio: float) -> Iterator[None]:
        """Run this thread's forward passes at ``keep_ratio`` inside the ``with`` block."""
        with thread_keep_ratio_context(self, keep_ratio):
            yield

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(  # type: ignore[override]
        self,
        pixel_values: torch.Tensor,
        keep_ratio: Optional[float] = None,
        **kwargs: Any,
    ) -> BaseModelOutput:
        """pixel_values: B x 3 x S x S -> ``last_hidden_state`` B x (S/p)^2 x C.

        ``keep_ratio``: this call's share, in (0, 1]; None: :attr:`keep_ratio`.
        """
        ratio = self.keep_ratio if keep_ratio is None else validate_keep_ratio(keep_ratio)
        hidden_states = self.embeddings(pixel_values)  # (B, HW, C)
        B, _, C = hidden_states.shape
        H = pixel_values.shape[-2] // self.config.patch_size
        W = pixel_values.shape[-1] // self.config.patch_size
        hidden_states = self.layer_norm(hidden_states.view(B, H, W, C))  # (B, H, W, C)
        for layer in self.layers:
            hidden_states = layer(hidden_states, keep_ratio=ratio, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states.view(B, H * W, C))


def register_sam3() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` know ``model_type="biglittle_sam3_vit"``
    (idempotent)."""
    AutoConfig.register(BigLittleSam3ViTConfig.model_type, BigLittleSam3ViTConfig, exist_ok=True)
    AutoModel.register(BigLittleSam3ViTConfig, BigLittleSam3ViTModel, exist_ok=True)
