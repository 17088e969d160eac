"""``ImageEncoderBigLittle``: a drop-in replacement for SAM's ``ImageEncoderViT``."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import PatchEmbed
from torch import Tensor, nn

from ..config import (
    BigLittleConfig,
    SamViTConfig,
    little_window,
    validate_keep_ratio,
    validate_pool_kv,
    validate_routing,
)
from .blocks import BigBlock, BigLittleBlock, LayerRouting
from .copy_little import training_free_blocks
from .global_context import attach_global_context
from .thread_ratio import thread_keep_ratio, thread_keep_ratio_context
from .vit_config import sam_block_fields, vit_config

__all__ = ["ImageEncoderBigLittle", "ImageEncoderViTFused", "BigLittleAux", "padding_tokens"]


@dataclass
class BigLittleAux:
    """Routing details of one forward pass, one entry per layer."""

    layers: List[LayerRouting] = field(default_factory=list)

    def usage(self) -> Tensor:
        """B x H x W: the share of layers in which each token took the big path."""
        if not self.layers:
            raise ValueError("no layers were recorded")
        stacked = torch.stack([r.selected for r in self.layers]).float()  # (L, B, H, W)
        return stacked.mean(dim=0)


def _sam_neck(config: SamViTConfig) -> nn.Sequential:
    """SAM's neck: conv1x1 -> LayerNorm2d -> conv3x3 -> LayerNorm2d, no biases."""
    return nn.Sequential(
        nn.Conv2d(config.embed_dim, config.out_chans, kernel_size=1, bias=False),
        LayerNorm2d(config.out_chans),
        nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(config.out_chans),
    )


def _init_stem(module: nn.Module, config: SamViTConfig) -> None:
    """Contract attributes, patch embedding and position embedding, with SAM's names and shapes."""
    module.config = config
    module.img_size = config.img_size
    module.patch_size = config.patch_size
    module.out_chans = config.out_chans
    module.in_chans = config.in_chans
    module.patch_embed = PatchEmbed(
        kernel_size=(config.patch_size, config.patch_size),
        stride=(config.patch_size, config.patch_size),
        in_chans=config.in_chans,
        embed_dim=config.embed_dim,
    )
    grid = config.grid_size
    module.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, config.embed_dim))


def _check_input(x: Tensor, in_chans: int, img_size: int) -> None:
    """Raise a clear error unless x is a floating B x in_chans x img_size x img_size tensor."""
    expected = f"B x {in_chans} x {img_size} x {img_size}"
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected a floating-point image tensor ({expected}, normalized as "
            f"Sam.preprocess does), got dtype {x.dtype}"
        )
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_chans, img_size, img_size):
        raise ValueError(
            f"expected input of shape {expected} (normalized and padded by Sam.preprocess), "
            f"got {tuple(x.shape)}"
        )


def padding_tokens(x: Tensor, patch_size: int) -> Tensor:
    """B x H x W bool: True where a token's whole patch is zero in every channel.

    ``Sam.preprocess`` normalizes, then pads the bottom and right with zeros; a normalized pixel
    is never exactly zero (SAM's means are not integers), so such a patch is padding.

    Arguments:
      x: B x 3 x S x S normalized, padded images; patch_size: p (H = W = S / p).
    """
    B, _, S, _ = x.shape
    g = S // patch_size
    peak = x.abs().amax(dim=1).view(B, g, patch_size, g, patch_size)  # (B, S, S) -> (B, g, p, g, p)
    return peak.amax(dim=(2, 4)) == 0  # (B, g, g)


class ImageEncoderBigLittle(nn.Module):
    """The big.LITTLE image encoder.

    Contract (the one every ``segment_anything`` consumer relies on): ``forward`` takes B x 3 x S x
    S normalized, padded images (S = ``img_size``, 1024 for the full-size configs) and returns one
    tensor, B x ``out_chans`` x S/16 x S/16. ``patch_embed``, ``pos_embed``, the big path of every
    block and ``neck`` have exactly the names and shapes of SAM's ``ImageEncoderViT``.
    """

    def __init__(self, config: BigLittleConfig) -> None:
        """
        Arguments:
          config: the encoder's sizes; ``config.keep_ratio`` is the initial keep ratio.
        """
        super().__init__()
        _init_stem(self, config)
        if config.training_free:  # SAM's blocks alone (E-blocks only with little_correction)
            self.blocks = training_free_blocks(config)
        else:
            self.blocks = nn.ModuleList(
                BigLittleBlock(
                    config.embed_dim,
                    config.num_heads,
                    little_dim=config.little_dim,
                    little_heads=config.little_heads,
                    little_mlp_ratio=config.little_mlp_ratio,
                    little_window_size=little_window(config),
                    fused_attn=config.fused_attn,
                    **sam_block_fields(config, i),
                )
                for i in range(config.depth)
            )
            attach_global_context(self.blocks, config)  # skipped tokens of global layers
        self.neck = _sam_neck(config)
        # The run-time keep ratio and key/value pooling live here only (the config keeps the
        # values the model was built with, already validated when the config was made).
        self._keep_ratio = float(config.keep_ratio)
        self._pool_kv = bool(config.pool_kv)
        self.routing = config.routing
        self.skip_padding = config.skip_padding  # see BigLittleConfig.skip_padding
        # Which SAM the weights came from ("vit_b:sam_vit_b_01ec64.pth"); saved into checkpoints.
        self.teacher: str = config.teacher

    @property
    def keep_ratio(self) -> float:
        """Share of each group's tokens that take the big path, in (0, 1]; settable at run time.

        Inside :meth:`keep_ratio_context` this reads the calling thread's ratio; setting it
        changes the encoder's default, which every thread without a context uses.
        """
        override = thread_keep_ratio(self)
        return self._keep_ratio if override is None else override

    @keep_ratio.setter
    def keep_ratio(self, value: float) -> None:
        self._keep_ratio = validate_keep_ratio(value)

    @contextmanager
    def keep_ratio_context(self, keep_ratio: float) -> Iterator[None]:
        """Run this thread's forward passes at ``keep_ratio`` inside the ``with`` block.

        Other threads keep their own ratio (their context's, or the encoder's default), so one
        shared encoder can serve requests at different ratios at the same time. Contexts nest; the
        ratio is validated once, on entry (``ValueError`` outside (0, 1]).
        """
        with thread_keep_ratio_context(self, keep_ratio):
            yield

    @property
    def routing(self) -> str:
        """How tokens are scored: ``"learned"`` (the routers), ``"random"`` (uniform noise) or
        ``"update_norm"`` (the norm of each token's dense big-block update, computed for every
        token).

        Random scores come from torch's global RNG, so ``torch.manual_seed`` makes them repeatable.
        """
        return self.blocks[0].routing if len(self.blocks) else "learned"

    @routing.setter
    def routing(self, value: str) -> None:
        for blk in self.blocks:
            blk.routing = validate_routing(value)

    @property
    def pool_kv(self) -> bool:
        """Whether semi-cross attention pools the unrouted tokens' keys/values 2 x 2.

        Off, every token of a group is a key and a value at full resolution. On, the routed
        tokens stay full-resolution keys and the others are averaged over 2 x 2 blocks (see
        :meth:`~biglittle_sam.modeling.attention.Attention.attend_pooled`): k/v projections cost
        2 (rN + N/4) C^2 instead of 2 N C^2. Layers that route every token are unchanged, so at keep
        ratio 1 the output is the same either way. Needs an even grid and window size.
        """
        return self._pool_kv

    @pool_kv.setter
    def pool_kv(self, value: bool) -> None:
        if value:
            validate_pool_kv(self.config.grid_size, self.config.window_size)
        self._pool_kv = bool(value)

    @property
    def fused_attn(self) -> bool:
        """Whether attention runs through ``scaled_dot_product_attention`` (else the reference)."""
        return all(m.fused for m in self._attentions())

    @fused_attn.setter
    def fused_attn(self, value: bool) -> None:
        for m in self._attentions():
            m.fused = bool(value)

    def _attentions(self) -> List[nn.Module]:
        littles = [blk.little.attn for blk in self.blocks if hasattr(blk, "little")]
        return [blk.attn for blk in self.blocks] + littles

    def _run(
        self, x: Tensor, record: bool, keep_ratio: float
    ) -> Tuple[Tensor, Optional[BigLittleAux]]:
        _check_input(x, self.in_chans, self.img_size)
        padding = padding_tokens(x, self.patch_size) if self.skip_padding else None  # (B, H, W)
        x = self.patch_embed(x)  # (B, H, W, C)
        x = x + self.pos_embed
        aux = BigLittleAux() if record else None
        for i, blk in enumerate(self.blocks):
            x, routing = blk(
                x, keep_ratio, return_routing=record, padding=padding, pool_kv=self._pool_kv
            )
            if aux is not None and routing is not None:
                scores, selected, k, routed = routing
                # Capacity is static, so every image routes the same number of tokens; a stable
                # sort puts them first, in ascending order, without a data-dependent shape.
                rest = (~selected).flatten(1).to(torch.uint8)  # (B, H * W), 0 where routed
                indices = torch.argsort(rest, dim=1, stable=True)[:, :routed]  # (B, S)
                kind = "global" if blk.window_size == 0 else "window"
                aux.layers.append(LayerRouting(i, kind, k, scores.detach(), selected, indices))
        x = self.neck(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W) -> (B, out, H, W)
        return x, aux

    def forward(self, x: Tensor) -> Tensor:
        """x: B x 3 x S x S -> B x out_chans x S/16 x S/16 image embeddings."""
        return self._run(x, record=False, keep_ratio=self.keep_ratio)[0]

    def forward_with_aux(
        self, x: Tensor, keep_ratio: Optional[float] = None
    ) -> Tuple[Tensor, BigLittleAux]:
        """As :meth:`forward`, plus per-layer routing (selected tokens and router scores).

        Arguments:
          x: B x 3 x S x S normalized, padded images.
          keep_ratio: run this call at this ratio, in (0, 1]; None: :attr:`keep_ratio`.
        """
        ratio = self.keep_ratio if keep_ratio is None else validate_keep_ratio(keep_ratio)
        out, aux = self._run(x, record=True, keep_ratio=ratio)
        assert aux is not None
        return out, aux


class ImageEncoderViTFused(nn.Module):
    """SAM's ViT image encoder on the fused-attention path: the "fast SAM" baseline.

    Same parameters and state-dict keys as ``segment_anything``'s ``ImageEncoderViT`` (so SAM's
    weights load strictly), computed by :class:`BigBlock`'s dense path, which uses
    ``scaled_dot_product_attention`` and projects keys and values only for real (unpadded) tokens.
    It separates what fused kernels buy from what routing buys: big.LITTLE at keep ratio r against
    this encoder is the speedup of routing alone.
    """

    def __init__(self, config: SamViTConfig) -> None:
        """
        Arguments:
          config: a plain SAM config (``vit_b``...).
        """
        super().__init__()
        _init_stem(self, config)
        self.blocks = nn.ModuleList(
            BigBlock(config.embed_dim, config.num_heads, **sam_block_fields(config, i))
            for i in range(config.depth)
        )
        self.neck = _sam_neck(config)

    @classmethod
    def from_sam(cls, encoder: nn.Module) -> "ImageEncoderViTFused":
        """The fused twin of a ``segment_anything`` ``ImageEncoderViT``, with its weights."""
        fused = cls(vit_config(encoder))
        fused.load_state_dict(encoder.state_dict(), strict=True)
        return fused.to(next(encoder.parameters()).device).train(encoder.training)

    def forward(self, x: Tensor) -> Tensor:
        """x: B x 3 x S x S -> B x out_chans x S/16 x S/16, as SAM's encoder."""
        _check_input(x, self.in_chans, self.img_size)
        x = self.patch_embed(x) + self.pos_embed  # (B, H, W, C)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W) -> (B, out, H, W)
