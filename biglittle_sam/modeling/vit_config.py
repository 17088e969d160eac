"""The config of an upstream ``segment_anything`` ``ImageEncoderViT``, read back from its sizes, and
the keyword arguments of a config's SAM block at one layer.

Kept apart from ``encoder_ops`` so that ``image_encoder`` can use it without importing itself.
"""

from __future__ import annotations

from typing import Any, Dict

from segment_anything.modeling import ImageEncoderViT

from ..config import SAM_CONFIGS, SamViTConfig

__all__ = ["vit_config", "sam_block_fields"]


def vit_config(encoder: ImageEncoderViT) -> SamViTConfig:
    """The registered config with ``encoder``'s sizes, or a ``custom`` one recovered from them."""
    embed_dim = encoder.patch_embed.proj.out_channels
    depth = len(encoder.blocks)
    globals_ = tuple(i for i, b in enumerate(encoder.blocks) if b.window_size == 0)
    windows = [b.window_size for b in encoder.blocks if b.window_size > 0]
    for cfg in SAM_CONFIGS.values():
        if (cfg.embed_dim, cfg.depth, cfg.img_size) == (embed_dim, depth, encoder.img_size):
            return cfg
    return SamViTConfig(
        name="custom",
        img_size=encoder.img_size,
        patch_size=encoder.patch_embed.proj.kernel_size[0],
        embed_dim=embed_dim,
        depth=depth,
        num_heads=encoder.blocks[0].attn.num_heads,
        window_size=windows[0] if windows else 14,
        global_attn_indexes=globals_,
        out_chans=encoder.neck[0].out_channels,
    )


def sam_block_fields(config: SamViTConfig, layer: int) -> Dict[str, Any]:
    """Layer ``layer``'s SAM block arguments besides width and heads: MLP ratio, biases, relative
    position, its window (0 in the global layers) and the token grid."""
    grid = config.grid_size
    return {
        "mlp_ratio": config.mlp_ratio,
        "qkv_bias": config.qkv_bias,
        "use_rel_pos": config.use_rel_pos,
        "window_size": 0 if layer in config.global_attn_indexes else config.window_size,
        "input_size": (grid, grid),
    }
