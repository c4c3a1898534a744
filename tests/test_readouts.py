import dataclasses

import pytest
import torch

from vitlab import models
from vitlab.analysis import metrics
from vitlab.analysis.distance import DistanceResult, distance_analysis
from vitlab.analysis.filters import FiltersResult, filters_analysis
from vitlab.analysis.positions import PositionResult, position_analysis
from vitlab.analysis.references import INIT_SEEDS, random_init
from vitlab.analysis.rollout import RolloutResult, rollout_analysis
from vitlab.views import readouts

# Readouts say what an analysis result holds: these tests check their verdicts against the rules, from
# results built by hand (the numbers themselves are checked in test_distance, test_filters, ...).


def _distance(high: list[list[float]], uniform: float = 16.0, band=None) -> DistanceResult:
    """A result whose per-image values are constant (so the interval is the value itself): (layers, heads)."""
    per_image = torch.tensor(high)[None].expand(4, -1, -1).clone()  # (images, layers, heads)
    return DistanceResult.from_per_image(per_image, uniform, band)


def test_a_head_is_local_below_half_of_uniform_and_below_every_random_init_head():
    r = readouts.readout(_distance([[2.0, 7.9, 8.1], [3.0, 16.0, 16.0]]))  # half of uniform: 8 px
    assert isinstance(r, readouts.DistanceReadout) and r.figure == "Fig. 7 (right)"
    assert r.local.tolist() == [[True, True, False], [True, False, False]]
    assert r.local_heads == ((1, 1), (1, 2), (2, 1)) and r.stem is None
    band = torch.full((3, 2, 3), 16.0)
    band[0, 1, 0] = 2.5  # a random-init head of layer 2 attends closer than the trained head of 3 px
    r = readouts.readout(_distance([[2.0, 7.9, 8.1], [3.0, 16.0, 16.0]], band=band))
    assert r.local.tolist() == [[True, True, False], [False, False, False]] and r.local_heads == ((1, 1), (1, 2))
    assert r.paper == readouts.PAPER_DISTANCE
    hybrid = dataclasses.replace(_distance([[16.0, 16.0]]), token_field=25.0)
    assert readouts.readout(hybrid).paper == readouts.PAPER_HYBRID_DISTANCE


def test_local_heads_only_in_middle_layers_are_named_by_layer_and_head_from_1():
    rows = [[16.0] * 3 for _ in range(5)]
    rows[2][1], rows[3][0], rows[3][2] = 3.0, 4.0, 5.0  # layers 3 and 4 of 5; uniform 16 px, so local below 8
    r = readouts.readout(_distance(rows, band=torch.full((3, 5, 3), 15.0)))
    assert r.local_heads == ((3, 2), (4, 1), (4, 3)) and int(r.local.sum()) == 3
    assert r.local[0].sum() == 0  # the lowest layer has none, and the readout still names the others
    shifted = DistanceResult.from_per_image(torch.tensor(rows)[None].expand(2, -1, -1).clone(), 16.0,
                                            layers=[2, 3, 4, 5, 6])  # rows are blocks 2-6: layers 3-7
    assert readouts.readout(shifted).local_heads == ((5, 2), (6, 1), (6, 3))


def test_no_local_head_in_any_layer():
    assert readouts.readout(_distance([[9.0, 16.0], [8.0, 12.0], [16.0, 16.0]])).local_heads == ()  # none below 8 px
    band = torch.full((3, 2, 2), 16.0)
    band[1, 1, 0] = 7.0  # layer 2's lowest random-init head attends closer than the trained 7.5 px
    r = readouts.readout(_distance([[9.0, 16.0], [7.5, 12.0]], band=band))
    assert r.local_heads == () and not r.local.any()
    spread = torch.tensor([2.0, 2.0, 2.0, 14.0])[:, None, None]  # mean 5 px, but a quarter of images at 14 px
    assert readouts.readout(DistanceResult.from_per_image(spread, 16.0)).local_heads == ()  # the interval reaches 8


def test_a_hybrids_heads_are_compared_with_the_window_of_its_stem():
    def stem(rows, field):
        return readouts.readout(dataclasses.replace(_distance(rows), token_field=field)).stem

    assert stem([[14.0, 17.0], [15.0, 16.5]], 25.0) == "below"  # every head shorter than the 25 px window
    assert stem([[14.0, 17.0], [15.0, 16.5]], 10.0) == "above"
    assert stem([[14.0, 17.0], [15.0, 16.5]], 16.0) == "across"  # 17 and 16.5 beyond, 14 and 15 below
    assert stem([[16.0, 16.0]], 16.0) == "below"  # on the line is not beyond it


def test_position_verdicts_follow_the_structure_and_mirror_rules():
    def result(closeness, mirror, neighbour, reference=()):
        return PositionResult(sim=torch.zeros(2, 2, 2, 2), structure=metrics.PositionStructure(closeness, 0.0),
                              mirror=metrics.MirrorScore(mirror, neighbour), reference=list(reference))

    def seeds(*closeness):
        return [(metrics.PositionStructure(c, 0.0), metrics.MirrorScore(0.0, 0.0)) for c in closeness]

    init = seeds(0.32, 0.35)
    cases = [(result(0.3, 0.3, 0.35), None, True, True), (result(0.29, 0.5, 0.56), None, False, False),
             (result(0.4, 0.29, 0.2), None, True, False), (result(0.34, 0.9, 0.9, init), "inside", False, True),
             (result(0.36, 0.0, 0.5, init), "above", True, False),
             (result(0.31, 0.0, 0.5, init), "below", False, False),
             (result(0.2, 0.0, 0.5, seeds(0.1, 0.15)), "above", False, False)]  # above init, below 0.3
    for res, where, grid, symmetric in cases:  # 0.3 and above random init; excess >= -0.05 and mirror >= 0.3
        r = readouts.readout(res)
        assert (r.structure_vs_init, r.grid_structure, r.mirror_symmetric) == (where, grid, symmetric)
        assert r.figure == "Fig. 7 (center)"


def _sincos(grid: tuple[int, int], dim: int = 64) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine embedding, (rows, cols, dim)."""
    rows, cols = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    parts = [f(x[..., None] * omega) for x in (r, c) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, -1)


def test_a_sinusoidal_embedding_holds_the_grid_and_a_mirrored_one_is_symmetric():
    emb = torch.nn.functional.normalize(_sincos((8, 8)), dim=-1).reshape(64, -1)
    result = PositionResult.from_similarity((emb @ emb.T).reshape(8, 8, 8, 8))
    r = readouts.readout(result)
    assert result.structure.closeness > 0.8 and r.grid_structure and not r.mirror_symmetric
    fold = _sincos((8, 4))  # columns c and 7-c share one embedding
    folded = torch.nn.functional.normalize(torch.cat([fold, fold.flip(1)], 1), dim=-1).reshape(64, -1)
    result = PositionResult.from_similarity((folded @ folded.T).reshape(8, 8, 8, 8))
    assert result.mirror.mirror == pytest.approx(1.0) and readouts.readout(result).mirror_symmetric


def test_filters_verdicts_place_both_shares_against_the_random_init_range():
    steep = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])  # first 0.5, first two 0.7

    def verdicts(*seeds):  # each seed: its first and second ratio, the rest spread evenly
        ref = torch.tensor([[a, b] + [(1 - a - b) / 3] * 3 for a, b in seeds])
        r = readouts.readout(FiltersResult.from_ratios(steep, ref, k=2))
        return r.first_vs_init, r.first_k_vs_init

    assert verdicts((0.4, 0.2), (0.45, 0.2)) == ("above", "above")  # 0.5 > 0.45; 0.7 > 0.65
    assert verdicts((0.4, 0.4), (0.6, 0.05)) == ("inside", "inside")  # 0.4 <= 0.5 <= 0.6; 0.65 <= 0.7 <= 0.8
    assert verdicts((0.55, 0.2), (0.6, 0.2)) == ("below", "below")  # 0.5 < 0.55; 0.7 < 0.75
    assert verdicts((0.5, 0.1), (0.5, 0.3)) == ("inside", "inside")  # on the range's edges is inside
    assert verdicts((0.4, 0.4), (0.45, 0.4)) == ("above", "below")  # 0.5 > 0.45, 0.7 < 0.8
    none = readouts.readout(FiltersResult.from_ratios(steep, None, k=2))
    assert (none.first_vs_init, none.first_k_vs_init) == (None, None)  # no random-init reference


def test_the_rollout_readout_and_what_has_none():
    r = readouts.readout(RolloutResult.from_maps(torch.ones(3, 8, 8)))
    assert type(r) is readouts.Readout and r.figure == "Fig. 6" and r.paper == readouts.PAPER_ROLLOUT
    assert "from the class token's row" in r.text
    pooled = readouts.readout(RolloutResult.from_maps(torch.ones(3, 8, 8), pool="avg", class_token=False)).text
    assert "from the mean of the patch rows: this model pools, it has no class token" in pooled
    assert "class token's row" not in pooled
    with pytest.raises(TypeError, match="no readout for"):
        readouts.readout(torch.zeros(3))


def test_a_random_init_model_lies_inside_the_random_init_range():
    model = random_init(models.build_model({"zoo": "vit_micro_c10"}), seed=INIT_SEEDS[1])  # one of the reference seeds
    positions = readouts.readout(position_analysis(model))
    assert positions.structure_vs_init == "inside" and not positions.grid_structure
    filters = readouts.readout(filters_analysis(model, k=5))
    assert (filters.first_vs_init, filters.first_k_vs_init) == ("inside", "inside")


def named_text(view) -> str:
    return view.readout.value.split("</b>")[1]


@pytest.fixture
def micro_file(tmp_path):
    torch.manual_seed(3)
    return str(models.save_model(models.build_model({"zoo": "vit_micro_c10"}), tmp_path / "micro.safetensors"))


def test_explorers_show_the_readout_of_what_they_draw(micro_file):
    from vitlab.views import explorers

    model = models.load_model(micro_file, device="cpu")
    view = explorers.PositionEmbeddingExplorer([micro_file])
    assert view.readout.value == readouts.readout(position_analysis(model)).html()
    view = explorers.EmbeddingFiltersExplorer([micro_file], k=5)
    assert view.readout.value == readouts.readout(filters_analysis(model, k=5)).html()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    view = explorers.AttentionMapsExplorer([micro_file], images, [f"img{i}" for i in range(6)])
    named = rollout_analysis(model, images, described="the 6 images of the image list")  # says which images
    assert view.readout.value == readouts.readout(named).html()
    assert named_text(view).startswith(" Over the 6 images of the image list:")
    view = explorers.AttentionMapsExplorer([micro_file], images, [f"img{i}" for i in range(6)], described="six noises")
    assert named_text(view).startswith(" Over six noises:")
    view = explorers.AttentionDistanceExplorer([micro_file], images, default=6)
    assert view.readout.value == readouts.readout(distance_analysis(model, images)).html()


def test_attention_distance_view_returns_the_figure_and_the_readout_of_one_analysis(micro_file):
    from vitlab.views import explorers

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    figure, readout = explorers.attention_distance_view(micro_file, images)
    expected = distance_analysis(models.load_model(micro_file, device="cpu"), images)
    again = readouts.readout(expected)
    assert readout.text == again.text and readout.local_heads == again.local_heads
    heads = [t for t in figure.data if t.name and t.name.startswith("head ")]
    assert [float(y) for y in heads[0].y] == pytest.approx(expected.mean[:, 0].tolist(), abs=1e-4)
