"""State-dict keys between segment_anything's layout and transformers' ``SamModel`` layout.

Pure renaming: no tensor is changed, so a conversion there and back is bit-exact. SAM's weights
map one to one (``image_encoder.blocks.3.norm1.weight`` <-> ``vision_encoder.layers.3.layer_norm1.
weight``, ``mask_decoder.output_upscaling.0`` <-> ``mask_decoder.upscale_conv1``...). A big.LITTLE
encoder keeps this project's names under ``vision_encoder.image_encoder.`` (its E-blocks and
routers have no transformers counterpart), so its HF layout is ``vision_encoder.image_encoder.*``
plus transformers' names for the prompt encoder and the mask decoder.

Needs neither transformers nor a model: the converter, the swap and the tests share it.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence, Tuple

from torch import Tensor

__all__ = [
    "LayoutError",
    "sam_to_hf_state",
    "hf_to_sam_state",
    "hf_vision_to_encoder_state",
    "BIGLITTLE_ENCODER_PREFIX",
    "TIED_HF_KEY",
]

StateDict = Dict[str, Tensor]

# Where a big.LITTLE encoder's own state dict sits in the HF layout.
BIGLITTLE_ENCODER_PREFIX = "vision_encoder.image_encoder."
# transformers ties the prompt encoder's copy of the random-Fourier matrix to this one.
SHARED_HF_KEY = "shared_image_embedding.positional_embedding"
TIED_HF_KEY = "prompt_encoder.shared_embedding.positional_embedding"


class LayoutError(ValueError):
    """A state dict with keys that belong to neither layout; the message names them."""


# Placeholders of the rename templates below: what each may stand for in a key.
_FIELDS = {
    "i": r"\d+",
    "n": r"\d",
    "p": r"weight|bias",
    "lin": r"lin[12]",
    "qkv": r"qkv|proj",
    "rel": r"rel_pos_[hw]",
    "attn": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token",
    "proj": r"q_proj|k_proj|v_proj|out_proj",
    "mlp": r"output_hypernetworks_mlps\.\d+|iou_prediction_head",
}

# (segment_anything name, HF name) below "image_encoder." / "vision_encoder.".
_VISION: Tuple[Tuple[str, str], ...] = (
    ("patch_embed.proj.{p}", "patch_embed.projection.{p}"),
    ("pos_embed", "pos_embed"),
    ("blocks.{i}.norm{n}.{p}", "layers.{i}.layer_norm{n}.{p}"),
    ("blocks.{i}.attn.{qkv}.{p}", "layers.{i}.attn.{qkv}.{p}"),
    ("blocks.{i}.attn.{rel}", "layers.{i}.attn.{rel}"),
    ("blocks.{i}.mlp.{lin}.{p}", "layers.{i}.mlp.{lin}.{p}"),
    ("neck.0.weight", "neck.conv1.weight"),
    ("neck.1.{p}", "neck.layer_norm1.{p}"),
    ("neck.2.weight", "neck.conv2.weight"),
    ("neck.3.{p}", "neck.layer_norm2.{p}"),
)

# Below "prompt_encoder." on both sides (the Fourier matrix is handled apart: it moves up).
_PROMPT: Tuple[Tuple[str, str], ...] = (
    ("point_embeddings.{i}.weight", "point_embed.{i}.weight"),
    ("not_a_point_embed.weight", "not_a_point_embed.weight"),
    ("no_mask_embed.weight", "no_mask_embed.weight"),
    ("mask_downscaling.0.{p}", "mask_embed.conv1.{p}"),
    ("mask_downscaling.1.{p}", "mask_embed.layer_norm1.{p}"),
    ("mask_downscaling.3.{p}", "mask_embed.conv2.{p}"),
    ("mask_downscaling.4.{p}", "mask_embed.layer_norm2.{p}"),
    ("mask_downscaling.6.{p}", "mask_embed.conv3.{p}"),
)
_SAM_FOURIER = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

# Below "mask_decoder." on both sides. SAM's 3-layer MLPs (layers.0/1/2) are transformers'
# proj_in / layers.0 / proj_out (iou_head_depth and the hypernetworks' depth are 3 in every SAM).
_DECODER: Tuple[Tuple[str, str], ...] = (
    ("iou_token.weight", "iou_token.weight"),
    ("mask_tokens.weight", "mask_tokens.weight"),
    ("transformer.layers.{i}.{attn}.{proj}.{p}", "transformer.layers.{i}.{attn}.{proj}.{p}"),
    ("transformer.layers.{i}.norm{n}.{p}", "transformer.layers.{i}.layer_norm{n}.{p}"),
    ("transformer.layers.{i}.mlp.{lin}.{p}", "transformer.layers.{i}.mlp.{lin}.{p}"),
    ("transformer.final_attn_token_to_image.{proj}.{p}", "transformer.final_attn_token_to_image.{proj}.{p}"),  # noqa: E501
    ("transformer.norm_final_attn.{p}", "transformer.layer_norm_final_attn.{p}"),
    ("output_upscaling.0.{p}", "upscale_conv1.{p}"),
    ("output_upscaling.1.{p}", "upscale_layer_norm.{p}"),
    ("output_upscaling.3.{p}", "upscale_conv2.{p}"),
    ("{mlp}.layers.0.{p}", "{mlp}.proj_in.{p}"),
    ("{mlp}.layers.1.{p}", "{mlp}.layers.0.{p}"),
    ("{mlp}.layers.2.{p}", "{mlp}.proj_out.{p}"),
)  # fmt: skip

Rule = Tuple["re.Pattern[str]", str]


def _compile(template: str) -> "re.Pattern[str]":
    """A name template as a regex: literal text escaped, each ``{field}`` a named group."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if k % 2 == 0 else f"(?P<{part}>{_FIELDS[part]})"
        for k, part in enumerate(parts)
    )
    return re.compile(regex)


def _rules(pairs: Sequence[Tuple[str, str]], to_hf: bool) -> Tuple[Rule, ...]:
    """(source regex, target template) for one direction."""
    return tuple((_compile(a if to_hf else b), b if to_hf else a) for a, b in pairs)


def _rename(key: str, rules: Sequence[Rule]) -> str:
    for pattern, target in rules:
        match = pattern.fullmatch(key)
        if match:
            return target.format(**match.groupdict())
    raise KeyError(key)


_PARTS = (
    ("image_encoder.", "vision_encoder.", _VISION),
    ("prompt_encoder.", "prompt_encoder.", _PROMPT),
    ("mask_decoder.", "mask_decoder.", _DECODER),
)
Groups = Dict[str, Tuple[str, Tuple[Rule, ...]]]
# source prefix -> (target prefix, rules), per direction.
_GROUPS: Groups = {sam: (hf, _rules(pairs, True)) for sam, hf, pairs in _PARTS}
_INVERSE: Groups = {hf: (sam, _rules(pairs, False)) for sam, hf, pairs in _PARTS}


def _convert(state: Mapping[str, Tensor], groups: Groups) -> Tuple[StateDict, List[str]]:
    """Rename every key of ``state`` by the group its prefix names; unmatched keys listed."""
    out: StateDict = {}
    unknown: List[str] = []
    for key, value in state.items():
        for prefix, (target, rules) in groups.items():
            if key.startswith(prefix):
                try:
                    out[target + _rename(key[len(prefix) :], rules)] = value
                except KeyError:
                    unknown.append(key)
                break
        else:
            unknown.append(key)
    return out, unknown


def _refuse(unknown: List[str], layout: str, n: int = 8) -> None:
    if unknown:
        more = f" and {len(unknown) - n} more" if len(unknown) > n else ""
        raise LayoutError(
            f"{len(unknown)} key(s) are not in the {layout} layout of a SAM model: "
            f"{', '.join(sorted(unknown)[:n])}{more}"
        )


def sam_to_hf_state(state: Mapping[str, Tensor], biglittle: bool = False) -> StateDict:
    """A whole SAM's state dict, segment_anything layout -> transformers' ``SamModel`` layout.

    Arguments:
      state: ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys, as an official
        SAM file or this project's checkpoints hold them.
      biglittle: the image encoder is big.LITTLE: its keys move under
        ``vision_encoder.image_encoder.`` unchanged (else they take ``SamVisionEncoder``'s names).

    Returns:
      The renamed state dict (the same tensors), with the tied Fourier matrix under both of
      transformers' names.

    Raises:
      LayoutError: a key that a SAM model of segment_anything's layout does not have.
    """
    rest = {k: v for k, v in state.items() if k != _SAM_FOURIER}
    groups = dict(_GROUPS)
    if biglittle:
        encoder = {k: v for k, v in rest.items() if k.startswith("image_encoder.")}
        rest = {k: v for k, v in rest.items() if not k.startswith("image_encoder.")}
        del groups["image_encoder."]
    out, unknown = _convert(rest, groups)
    if _SAM_FOURIER not in state:
        unknown.append(f"(missing) {_SAM_FOURIER}")
    _refuse(unknown, "segment_anything")
    if biglittle:
        out.update(
            {BIGLITTLE_ENCODER_PREFIX + k[len("image_encoder.") :]: v for k, v in encoder.items()}
        )
    out[SHARED_HF_KEY] = out[TIED_HF_KEY] = state[_SAM_FOURIER]
    return out


def hf_to_sam_state(state: Mapping[str, Tensor]) -> StateDict:
    """A whole ``SamModel`` (or big.LITTLE ``SamModel``) state dict -> segment_anything layout.

    The big.LITTLE encoder is recognized by its ``vision_encoder.image_encoder.`` prefix. The
    prompt encoder's tied copy of the Fourier matrix may be absent (safetensors stores it once).

    Raises:
      LayoutError: a key of neither layout, or two Fourier matrices that differ.
    """
    rest = dict(state)
    shared = rest.pop(SHARED_HF_KEY, None)
    tied = rest.pop(TIED_HF_KEY, None)
    if shared is None:
        shared = tied
    if shared is None:
        raise LayoutError(f"the state dict has no {SHARED_HF_KEY} (the prompt Fourier features)")
    if tied is not None and not (tied is shared or tied.equal(shared)):
        raise LayoutError(f"{TIED_HF_KEY} differs from {SHARED_HF_KEY}; they must be tied")
    encoder = {k: v for k, v in rest.items() if k.startswith(BIGLITTLE_ENCODER_PREFIX)}
    groups = dict(_INVERSE)
    if encoder:
        rest = {k: v for k, v in rest.items() if not k.startswith(BIGLITTLE_ENCODER_PREFIX)}
        del groups["vision_encoder."]
    out, unknown = _convert(rest, groups)
    _refuse(unknown, "transformers SamModel")
    out.update(
        {"image_encoder." + k[len(BIGLITTLE_ENCODER_PREFIX) :]: v for k, v in encoder.items()}
    )
    out[_SAM_FOURIER] = shared
    return out


def hf_vision_to_encoder_state(state: Mapping[str, Tensor]) -> StateDict:
    """A ``SamVisionEncoder``'s own state dict (``layers.*``...) -> ``ImageEncoderViT`` names."""
    out, unknown = _convert({"vision_encoder." + k: v for k, v in state.items()}, _INVERSE)
    _refuse(unknown, "transformers SamVisionEncoder")
    return {k[len("image_encoder.") :]: v for k, v in out.items()}
