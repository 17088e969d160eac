"""A per-call keep ratio: ``keep_ratio_context`` and ``forward_with_aux(keep_ratio=...)``.

One shared encoder serves requests at different ratios at the same time; each thread gets its own
ratio and its own cost, and the shared default is never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Dict, List

import pytest
import torch

from biglittle_sam import BIGLITTLE_CONFIGS, ImageEncoderBigLittle, sam_model_registry
from biglittle_sam.build_sam import keep_ratio_context as keep_ratio_context_from_build_sam
from biglittle_sam.config import capacity, window_capacities
from biglittle_sam.demo.engine import encode_image
from biglittle_sam.demo.models import DemoModel
from biglittle_sam.modeling import BigLittleAux, get_keep_ratio, keep_ratio_context

from .conftest import randomize_

TINY = BIGLITTLE_CONFIGS["bl_tiny"]
GRID = TINY.grid_size


def _encoder(keep_ratio: float = 0.5) -> ImageEncoderBigLittle:
    torch.manual_seed(0)
    enc = ImageEncoderBigLittle(dataclasses.replace(TINY, keep_ratio=keep_ratio))
    return randomize_(enc, std=0.1).eval()


def _routed_per_layer(keep_ratio: float) -> List[int]:
    """Tokens per image each bl_tiny layer sends to the big block at ``keep_ratio``."""
    out = []
    for i in range(TINY.depth):
        if i in TINY.global_attn_indexes:
            out.append(capacity(keep_ratio, GRID * GRID))
        else:
            out.append(sum(window_capacities(keep_ratio, (GRID, GRID), TINY.window_size)))
    return out


def _routed(aux: BigLittleAux) -> List[int]:
    return [int(layer.selected[0].sum()) for layer in aux.layers]


def test_routed_counts_differ_between_the_two_ratios() -> None:
    """The two ratios the thread test uses give different costs, so it can tell them apart."""
    assert _routed_per_layer(0.25) != _routed_per_layer(0.75)
    enc = _encoder()
    x = torch.randn(1, 3, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        for r in (0.25, 0.75):
            assert _routed(enc.forward_with_aux(x, keep_ratio=r)[1]) == _routed_per_layer(r)


def test_two_threads_encode_at_their_own_ratio_at_the_same_time() -> None:
    sam = sam_model_registry["bl_tiny"](keep_ratio=0.5)
    randomize_(sam.image_encoder, std=0.1)
    sam.eval()
    x = torch.randn(1, 3, TINY.img_size, TINY.img_size)
    # Both threads are inside their contexts before either encodes, and stay inside until both
    # have read their ratio back after encoding: the two overrides overlap throughout.
    entered = threading.Barrier(2, timeout=60)
    encoded = threading.Barrier(2, timeout=60)
    seen: Dict[float, Dict[str, object]] = {}
    errors: List[BaseException] = []

    def work(ratio: float) -> None:
        try:
            with keep_ratio_context(sam, ratio), torch.no_grad():
                entered.wait()
                _, aux = sam.image_encoder.forward_with_aux(x)
                plain = sam.image_encoder(x)
                encoded.wait()
                seen[ratio] = {
                    "inside": get_keep_ratio(sam),
                    "routed": _routed(aux),
                    "capacity": [layer.capacity for layer in aux.layers],
                    "plain": plain,
                }
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(r,)) for r in (0.25, 0.75)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    enc = sam.image_encoder
    for ratio in (0.25, 0.75):
        assert seen[ratio]["inside"] == ratio
        assert seen[ratio]["routed"] == _routed_per_layer(ratio)
        with torch.no_grad():
            want_aux = enc.forward_with_aux(x, keep_ratio=ratio)[1]
            want = enc.forward_with_aux(x, keep_ratio=ratio)[0]
        assert seen[ratio]["capacity"] == [layer.capacity for layer in want_aux.layers]
        torch.testing.assert_close(seen[ratio]["plain"], want, rtol=0, atol=0)
    assert get_keep_ratio(sam) == 0.5  # the shared default never moved


def test_context_restores_nests_and_leaves_other_threads_alone() -> None:
    enc = _encoder(0.5)
    other: List[float] = []
    with keep_ratio_context(enc, 0.25):
        assert enc.keep_ratio == 0.25
        with keep_ratio_context(enc, 1.0):
            assert enc.keep_ratio == 1.0
            t = threading.Thread(target=lambda: other.append(enc.keep_ratio))
            t.start()
            t.join()
        assert enc.keep_ratio == 0.25
    assert enc.keep_ratio == 0.5
    assert other == [0.5]


def test_context_is_per_encoder_and_survives_an_exception() -> None:
    enc = _encoder(0.5)
    twin = copy.deepcopy(enc)  # encoders stay deep-copyable: the override is not stored on them
    with pytest.raises(RuntimeError, match="boom"):
        with keep_ratio_context(enc, 0.25):
            assert (enc.keep_ratio, twin.keep_ratio) == (0.25, 0.5)
            raise RuntimeError("boom")
    assert enc.keep_ratio == 0.5


def test_context_output_equals_setting_the_ratio() -> None:
    enc = _encoder(0.5)
    x = torch.randn(2, 3, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        with keep_ratio_context(enc, 0.25):
            inside = enc(x)
        enc.keep_ratio = 0.25
        torch.testing.assert_close(inside, enc(x), rtol=0, atol=0)


def test_bad_ratios_and_plain_sam() -> None:
    enc = _encoder()
    for bad in (0.0, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="keep_ratio"):
            with keep_ratio_context(enc, bad):  # type: ignore[arg-type]
                pass
        with pytest.raises(ValueError, match="keep_ratio"):
            enc.forward_with_aux(torch.zeros(1, 3, 256, 256), keep_ratio=bad)  # type: ignore
    assert enc.keep_ratio == 0.5
    sam = sam_model_registry["vit_tiny"]()
    with keep_ratio_context_from_build_sam(sam, 1.0):  # plain SAM: every token is big
        assert get_keep_ratio(sam) == 1.0
    with pytest.raises(TypeError, match="not a big.LITTLE encoder"):
        with keep_ratio_context(sam, 0.5):
            pass


def test_demo_encode_leaves_the_shared_ratio_alone() -> None:
    """Issue 17: after one session encoded at 0.75, a new session's default is still the
    model's own ratio."""
    sam = sam_model_registry["bl_tiny"](keep_ratio=0.5).eval()
    model = DemoModel("student", sam)
    image = (torch.rand(40, 60, 3) * 255).to(torch.uint8).numpy()
    encoded = encode_image(model, image, 0.75)
    assert encoded.keep_ratio == 0.75
    assert model.default_keep_ratio == 0.5
