import dataclasses

import pytest
import torch

from vitlab import models
from vitlab.analysis import metrics
from vitlab.analysis.distance import DistanceResult, distance_analysis
from vitlab.analysis.filters import FiltersResult, filters_analysis
from vitlab.analysis.positions import PositionResult, position_analysis
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
    band = torch.full((3, 2, 3), 16.0)
    band[0, 1, 0] = 2.5  # a random-init head of layer 2 attends closer than the trained head of 3 px
    r = readouts.readout(_distance([[2.0, 7.9, 8.1], [3.0, 16.0, 16.0]], band=band))
    assert r.local.tolist() == [[True, True, False], [False, False, False]]
    assert r.paper == readouts.PAPER_DISTANCE
    assert readouts.readout(_distance([[16.0, 16.0]])).local.tolist() == [[False, False]]  # uniform attention
    hybrid = dataclasses.replace(_distance([[16.0, 16.0]]), token_field=25.0)
    assert readouts.readout(hybrid).paper == readouts.PAPER_HYBRID_DISTANCE


def test_position_verdicts_follow_the_structure_and_mirror_rules():
    def result(closeness, mirror, neighbour, reference=()):
        return PositionResult(sim=torch.zeros(2, 2, 2, 2), structure=metrics.PositionStructure(closeness, 0.0),
                              mirror=metrics.MirrorScore(mirror, neighbour), reference=list(reference))

    init = [(metrics.PositionStructure(0.35, 0.0), metrics.MirrorScore(0.0, 0.0))]
    cases = [(result(0.3, 0.3, 0.35), True, True), (result(0.29, 0.5, 0.56), False, False),
             (result(0.4, 0.29, 0.2), True, False), (result(0.34, 0.9, 0.9, init), False, True)]
    for res, grid, symmetric in cases:  # threshold 0.3 and above random init; excess >= -0.05 and mirror >= 0.3
        r = readouts.readout(res)
        assert (r.grid_structure, r.mirror_symmetric) == (grid, symmetric) and r.figure == "Fig. 7 (center)"


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


def test_filters_verdict_compares_the_first_component_with_random_init():
    steep = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1])
    verdict = lambda ref: readouts.readout(FiltersResult.from_ratios(steep, ref, k=2)).verdict  # noqa: E731
    assert verdict(torch.full((3, 5), 0.2)) == "clearly more"  # 0.5 >= 2 x 0.2
    assert verdict(torch.full((3, 5), 0.4)) == "a little more"  # 0.5 > 1.1 x 0.4
    assert verdict(torch.full((3, 5), 0.46)) == "no more"
    assert verdict(None) == ""  # no random-init reference


def test_the_rollout_readout_and_what_has_none():
    r = readouts.readout(RolloutResult.from_maps(torch.ones(3, 8, 8)))
    assert type(r) is readouts.Readout and r.figure == "Fig. 6" and r.paper == readouts.PAPER_ROLLOUT
    with pytest.raises(TypeError, match="no readout for"):
        readouts.readout(torch.zeros(3))


def test_a_random_model_shows_no_structure_against_random_init():
    model = models.build_model({"zoo": "vit_micro_c10"})
    assert not readouts.readout(position_analysis(model)).grid_structure
    assert readouts.readout(filters_analysis(model, k=5)).verdict == "no more"  # a random model against random ones


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
    assert view.readout.value == readouts.readout(rollout_analysis(model, images)).html()
    view = explorers.AttentionDistanceExplorer([micro_file], images, default=6)
    assert view.readout.value == readouts.readout(distance_analysis(model, images)).html()


def test_attention_distance_view_returns_the_figure_and_the_readout_of_one_analysis(micro_file):
    from vitlab.views import explorers

    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    figure, readout = explorers.attention_distance_view(micro_file, images)
    expected = distance_analysis(models.load_model(micro_file, device="cpu"), images)
    again = readouts.readout(expected)
    assert readout.text == again.text and torch.equal(readout.local, again.local)
    heads = [t for t in figure.data if t.name and t.name.startswith("head ")]
    assert [float(y) for y in heads[0].y] == pytest.approx(expected.mean[:, 0].tolist(), abs=1e-4)
