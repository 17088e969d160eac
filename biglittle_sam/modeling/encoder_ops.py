"""Operations on a built SAM model's image encoder: swap it, read its config, set its keep ratio.

They live below the registry (``build_sam`` re-exports them) so that the model code never has to
import the registry.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import ContextManager, Iterator, Union

from segment_anything.modeling import ImageEncoderViT, Sam
from torch import nn

from ..config import SamViTConfig, validate_keep_ratio
from .image_encoder import ImageEncoderBigLittle, ImageEncoderViTFused
from .timm_encoder import TimmImageEncoder
from .vit_config import vit_config

__all__ = [
    "swap_image_encoder",
    "set_keep_ratio",
    "get_keep_ratio",
    "keep_ratio_context",
    "model_config",
]


def swap_image_encoder(sam: Sam, encoder: nn.Module) -> Sam:
    """Put ``encoder`` into an existing ``Sam`` (for example one built with ``segment_anything``).

    The encoder must keep the contract the prompt encoder and mask decoder rely on: the same
    ``img_size`` and an embedding of ``out_chans`` = the prompt embedding width.
    """
    old = sam.image_encoder
    if getattr(encoder, "img_size", None) != old.img_size:
        raise ValueError(
            f"encoder img_size {getattr(encoder, 'img_size', None)} does not match the SAM model's "
            f"{old.img_size}"
        )
    width = sam.prompt_encoder.embed_dim
    out_chans = getattr(encoder, "out_chans", None)
    if out_chans is None and isinstance(encoder, ImageEncoderViT):
        out_chans = encoder.neck[0].out_channels
    if out_chans != width:
        raise ValueError(
            f"encoder out_chans {out_chans} does not match the prompt embedding width {width}"
        )
    sam.image_encoder = encoder.to(next(old.parameters()).device)
    if not sam.training:
        encoder.eval()
    return sam


def _encoder(model: Union[Sam, nn.Module]) -> nn.Module:
    return model.image_encoder if isinstance(model, Sam) else model


def set_keep_ratio(model: Union[Sam, nn.Module], keep_ratio: float) -> None:
    """Set the keep ratio of a big.LITTLE SAM model or encoder (ValueError outside (0, 1])."""
    encoder = _encoder(model)
    if not isinstance(encoder, ImageEncoderBigLittle):
        raise TypeError(
            f"{type(encoder).__name__} is not a big.LITTLE encoder; it has no keep ratio"
        )
    encoder.keep_ratio = keep_ratio


def get_keep_ratio(model: Union[Sam, nn.Module]) -> float:
    """The keep ratio of a big.LITTLE model, or 1.0 for a plain SAM encoder (every token is big)."""
    encoder = _encoder(model)
    return encoder.keep_ratio if isinstance(encoder, ImageEncoderBigLittle) else 1.0


@contextmanager
def keep_ratio_context(model: Union[Sam, nn.Module], keep_ratio: float) -> Iterator[None]:
    """Encode at ``keep_ratio`` in this thread, inside the ``with`` block only.

    Other threads sharing the model keep their own ratio, and nothing is left changed afterwards,
    so a server can encode each request at its own ratio on one shared model::

        with keep_ratio_context(sam, 0.25):
            predictor.set_image(image)

    A plain SAM encoder routes every token, so it accepts only ``keep_ratio`` 1 (a no-op);
    anything else raises ``TypeError``. ``ValueError`` outside (0, 1].
    """
    encoder = _encoder(model)
    if isinstance(encoder, ImageEncoderBigLittle):
        context: ContextManager[None] = encoder.keep_ratio_context(keep_ratio)
    elif validate_keep_ratio(keep_ratio) == 1.0:
        context = nullcontext()
    else:
        raise TypeError(
            f"{type(encoder).__name__} is not a big.LITTLE encoder; it runs every token at keep "
            f"ratio 1, got {keep_ratio}"
        )
    with context:
        yield


def model_config(model: Union[Sam, nn.Module]) -> SamViTConfig:
    """The config a model was built from, recovered from its encoder's sizes when not stored."""
    encoder = _encoder(model)
    if isinstance(encoder, (ImageEncoderBigLittle, ImageEncoderViTFused)):
        return encoder.config
    if isinstance(encoder, TimmImageEncoder) and isinstance(encoder.config, SamViTConfig):
        return encoder.config
    if not isinstance(encoder, ImageEncoderViT):
        raise TypeError(f"unsupported image encoder {type(encoder).__name__}")
    return vit_config(encoder)
