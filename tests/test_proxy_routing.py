"""The proxy benchmark's training-free routers and capacity-share statistic, on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from biglittle_sam.config import window_capacities
from experiments.proxy import (
    capacity_share,
    gradient_energy,
    object_coverage,
    select_top,
    token_norm,
)


def test_gradient_energy_scores_the_patches_an_edge_crosses() -> None:
    image = torch.zeros(1, 3, 8, 12)
    image[..., 6:] = 1.0  # a vertical edge between columns 5 and 6, inside patch column 1
    energy = gradient_energy(image, 4)  # (1, 2, 3)
    # Each row has one unit step at column 5: 4 of patch (r, 1)'s 16 pixels, energy 1 each.
    assert torch.equal(energy, torch.tensor([[[0.0, 0.25, 0.0], [0.0, 0.25, 0.0]]]))
    flat = gradient_energy(torch.full((2, 3, 8, 8), 0.7), 4)
    assert flat.shape == (2, 2, 2) and not flat.any()
    with pytest.raises(ValueError, match="do not tile into 5 px patches"):
        gradient_energy(image, 5)


def test_token_norm_is_the_distance_from_the_mean_token() -> None:
    tokens = torch.zeros(1, 2, 2, 2)
    tokens[0, 0, 0] = torch.tensor([4.0, 0.0])  # the one token unlike the others
    tokens += 10.0  # what every token shares does not count
    norms = token_norm(tokens)
    assert torch.allclose(norms, torch.tensor([[[3.0, 1.0], [1.0, 1.0]]]))
    with pytest.raises(ValueError, match="B x H x W x C"):
        token_norm(tokens[0])


def test_select_top_global_takes_the_best_ceil_r_n() -> None:
    scores = torch.arange(16.0).view(1, 4, 4)
    chosen = select_top(scores, 0.2)  # ceil(0.2 * 16) = 4
    assert chosen.sum() == 4 and chosen.view(-1)[-4:].all()
    # Padding is routed last, whatever its score.
    padding = torch.zeros(1, 4, 4, dtype=torch.bool)
    padding[0, 3] = True  # the best row is padding
    chosen = select_top(scores, 0.2, padding=padding)
    assert chosen[0, 2].all() and not chosen[0, 3].any()
    assert select_top(scores, 1.0, padding=padding).all()
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        select_top(scores, 1.5)


def test_select_top_windows_have_the_encoders_capacities_with_partial_edges() -> None:
    scores = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0))
    chosen = select_top(scores, 0.25, window_size=3)  # windows 3x3, 3x2 / 2x3, 2x2
    counts = [
        int(chosen[0, i : i + 3, j : j + 3].sum()) for i in range(0, 5, 3) for j in range(0, 5, 3)
    ]
    assert counts == list(window_capacities(0.25, (5, 5), 3)) == [3, 2, 2, 1]
    # Within a window, the best-scored tokens.
    window = scores[1, :3, :3].reshape(-1)
    assert torch.equal(chosen[1, :3, :3].reshape(-1), window >= window.topk(3).values[-1])


def test_object_coverage_is_each_patchs_share_on_objects() -> None:
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[0, :2, :2] = True  # a quarter of patch (0, 0)
    mask[0, :, 4:] = True  # all of patch (0, 1)
    assert torch.equal(object_coverage(mask, 4), torch.tensor([[[0.25, 1.0]]]))
    with pytest.raises(ValueError, match="do not tile"):
        object_coverage(mask, 3)


def test_capacity_share_against_the_objects_share_of_the_image() -> None:
    coverage = torch.zeros(1, 2, 4)
    coverage[0, 0, 0] = 1.0  # one token on an object, one half on it: 1.5 of 8 tokens
    coverage[0, 0, 1] = 0.5
    on_object = torch.zeros(1, 2, 4, dtype=torch.bool)
    on_object[0, 0, :2] = True  # both object tokens
    background = torch.zeros(1, 2, 4, dtype=torch.bool)
    background[0, 1, :2] = True
    share = capacity_share([on_object, background], coverage)  # two layers, 4 routed tokens
    assert share.routed_tokens == 4
    assert share.capacity_on_objects == pytest.approx(1.5 / 4)
    assert share.object_share == pytest.approx(1.5 / 8)
    assert share.enrichment == pytest.approx(2.0)
    # Routing everything spends capacity in proportion to area: enrichment 1.
    assert capacity_share(torch.ones(1, 2, 4, dtype=torch.bool), coverage).enrichment == 1.0
    # The object share counts the image's own tokens only, not its padding.
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 1] = False
    share = capacity_share(on_object, coverage, valid=valid)
    assert share.object_share == pytest.approx(1.5 / 4) and share.capacity_on_objects == 0.75
    assert math.isnan(capacity_share(on_object, torch.zeros(1, 2, 4)).enrichment)
    with pytest.raises(ValueError, match="B x H x W = \\(1, 2, 4\\)"):
        capacity_share(torch.ones(1, 3, 4, dtype=torch.bool), coverage)
    with pytest.raises(ValueError, match="no token was selected"):
        capacity_share(torch.zeros(1, 2, 4, dtype=torch.bool), coverage)


def test_an_object_seeking_heuristic_beats_random_routing_on_a_drawn_scene() -> None:
    """A bright rectangle on a flat background: gradient energy routes to its outline."""
    image = torch.zeros(1, 3, 64, 64)
    image[..., 20:44, 28:52] = 1.0  # 24 x 24 px, off the patch grid, 14% of the image
    coverage = object_coverage(image[:, 0] > 0, 8)  # (1, 8, 8)
    heuristic = capacity_share(select_top(gradient_energy(image, 8), 0.1), coverage)
    assert heuristic.object_share == pytest.approx(24 * 24 / 64**2)
    assert heuristic.routed_tokens == 7 and heuristic.enrichment > 2.5
    draws = [torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    random = [capacity_share(select_top(d, 0.1), coverage).enrichment for d in draws]
    assert sum(random) / len(random) < 1.5  # in proportion to area, about 1


def test_select_top_picks_what_the_encoder_picks_from_the_same_scores() -> None:
    """bl_tiny: a 16 x 16 grid, windows of 6 (edge windows 4 wide) and global layers."""
    from biglittle_sam.build_sam import sam_model_registry

    encoder = sam_model_registry["bl_tiny"](keep_ratio=0.25).image_encoder.eval()
    size = encoder.img_size
    with torch.no_grad():
        _, aux = encoder.forward_with_aux(torch.randn(2, 3, size, size))
    kinds = set()
    for layer, block in zip(aux.layers, encoder.blocks):
        kinds.add((layer.kind, block.window_size))
        assert torch.equal(select_top(layer.scores, 0.25, block.window_size), layer.selected)
    assert {kind for kind, _ in kinds} == {"window", "global"}
    grid = aux.layers[0].selected.shape[-1]
    assert any(grid % w for _, w in kinds if w)  # partial windows at the edge


def test_routed_layers_runs_the_other_kind_dense_and_restores_the_encoder() -> None:
    from biglittle_sam.build_sam import build_sam_from_config
    from biglittle_sam.config import biglittle_config_for
    from experiments.proxy.layers import routed_layers
    from experiments.proxy.settings import ProxyBenchmarkSettings

    torch.manual_seed(0)
    teacher = ProxyBenchmarkSettings().check()
    sam = build_sam_from_config(
        biglittle_config_for(teacher, "bl_tiny", little_dim=16, little_heads=2)
    )
    encoder = sam.image_encoder.eval()
    for block in encoder.blocks:  # E-blocks that change something
        torch.nn.init.normal_(block.little.gamma, std=0.1)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        encoder.keep_ratio = 1.0
        dense = encoder(x)
        encoder.keep_ratio = 0.25
        routed = encoder(x)
        with routed_layers(encoder, "global") as global_layers:
            only_global = encoder(x)
            with routed_layers(encoder, "windowed") as windowed_layers:
                nothing_routed = encoder(x)
        with routed_layers(encoder, "all") as every_layer:
            assert torch.equal(encoder(x), routed)
        after = encoder(x)
    assert global_layers == [1, 3] and windowed_layers == [0, 2] and every_layer == [0, 1, 2, 3]
    assert torch.allclose(nothing_routed, dense, atol=1e-5)  # both kinds dense: keep ratio 1
    assert not torch.allclose(only_global, routed) and not torch.allclose(only_global, dense)
    assert torch.equal(after, routed)  # the encoder is unchanged afterwards
    with pytest.raises(ValueError, match="kind must be one of"):
        with routed_layers(encoder, "local"):
            pass


def test_layer_ratios_and_their_macs() -> None:
    from biglittle_sam.build_sam import build_sam_from_config
    from biglittle_sam.config import biglittle_config_for
    from biglittle_sam.flops import encoder_macs
    from experiments.proxy.layers import layer_ratios
    from experiments.proxy.settings import ProxyBenchmarkSettings

    config = biglittle_config_for(
        ProxyBenchmarkSettings().check(), "bl_tiny", little_dim=16, little_heads=2
    )
    encoder = build_sam_from_config(config).image_encoder
    assert layer_ratios(encoder, "windowed", 0.1) == [0.1, 1.0, 0.1, 1.0]  # layers 1, 3 global
    assert layer_ratios(encoder, "global", 0.1) == [1.0, 0.1, 1.0, 0.1]
    assert layer_ratios(encoder, "all", 0.1) == [0.1] * 4
    total = {r: encoder_macs(config, r)["total"] for r in (0.1, 1.0)}
    assert encoder_macs(config, layer_ratios=[0.1] * 4)["total"] == total[0.1]
    mixed = [
        encoder_macs(config, layer_ratios=layer_ratios(encoder, k, 0.1))["total"]
        for k in ("windowed", "global")
    ]
    assert all(total[0.1] < m < total[1.0] for m in mixed)
    with pytest.raises(ValueError, match="one keep ratio per layer"):
        encoder_macs(config, layer_ratios=[0.5, 0.5])
