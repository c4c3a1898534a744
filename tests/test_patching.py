"""analysis.patching: recovered fractions against corrupted runs edited by hand (tests/conftest.py's hand forward),
the readout's own token recovering all, identical tokens recovering nothing, dropped pairs and pair classes."""
from __future__ import annotations

import pytest
import torch

from conftest import hand_attention, hand_logits, hand_states, small_timm_vit, uint8_images
from vitlab.analysis import patching
from vitlab.models import build_model, preprocess

REGION = [(1, 1), (1, 2), (2, 1), (2, 2)]  # the central quarter of a 4x4 grid
TOKENS = [1 + 4 * r + c for r, c in REGION]  # their token positions after the class token


def _diff(logits, classes):
    return logits.gather(1, classes[:, :1])[:, 0] - logits.gather(1, classes[:, 1:])[:, 0]


class Case:
    """A float64 model, images, labels and the test's own clean and corrupted runs (block inputs and after the last),
    classes, logit differences, and which pairs ``min_gap`` keeps."""

    def __init__(self, model, images, labels, corruption, min_gap):
        self.model, self.images, self.labels = model, images, labels
        x = preprocess(model, images)
        with torch.no_grad():
            self.clean = hand_states(model, x)
            if corruption == "region":
                bad = x.clone()
                for r, c in REGION:  # the normalised dataset mean is 0
                    bad[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 0.0
                self.bad = hand_states(model, bad)
                other = hand_logits(model, self.bad[-1]).clone()
                other[torch.arange(len(labels)), labels] = -torch.inf
                partner_labels = other.argmax(-1)
            else:
                partner = [next(j % len(labels) for j in range(i + 1, i + len(labels))
                                if labels[j % len(labels)] != labels[i]) for i in range(len(labels))]
                self.bad = hand_states(model, x[partner])
                partner_labels = labels[partner]
            self.classes = torch.stack([labels, partner_labels], 1)
            self.dc = _diff(hand_logits(model, self.clean[-1]), self.classes)
            self.dx = _diff(hand_logits(model, self.bad[-1]), self.classes)
        self.keep = (self.dc - self.dx >= min_gap).nonzero()[:, 0]
        self.result = patching.patching_analysis(model, images, labels, corruption=corruption, min_gap=min_gap,
                                                 batch_size=4)

    def recovered(self, layer, edit_state=None, edits=None):
        """Recovered fraction of each kept pair for a hand-run from block ``layer``'s (edited) corrupted input."""
        k = self.keep
        first = self.bad[layer][k].clone()
        if edit_state:
            edit_state(first, k)
        with torch.no_grad():
            final = hand_states(self.model, None, edits, start=layer, first=first)[-1]
            d = _diff(hand_logits(self.model, final), self.classes[k])
        return (d - self.dx[k]) / (self.dc[k] - self.dx[k])


@pytest.fixture(scope="module")
def region_case():
    torch.manual_seed(3)
    model = build_model({"zoo": "vit_micro_c10"}).double()
    images = uint8_images(8, seed=30)
    with torch.no_grad():
        labels = model(preprocess(model, images)).argmax(-1)
    return Case(model, images, labels, "region", 0.05)


def test_each_layer_and_token_matches_a_hand_edited_corrupted_run(region_case):
    case, depth = region_case, len(region_case.model.blocks)
    r = case.result
    assert r.recovered.shape == (len(case.keep), depth + 1, 17) and r.pairs >= 3
    assert torch.allclose(r.clean_diff, case.dc[case.keep], atol=1e-12, rtol=0)
    assert torch.allclose(r.corrupt_diff, case.dx[case.keep], atol=1e-12, rtol=0)
    assert torch.equal(r.classes, case.classes[case.keep])
    for layer in range(depth + 1):
        for token in range(17):
            def put(first, k, layer=layer, token=token):
                first[:, token] = case.clean[layer][k, token]
            assert torch.allclose(r.recovered[:, layer, token], case.recovered(layer, put), atol=1e-9, rtol=0)


def test_all_tokens_at_layer_0_recover_all_and_the_region_matters(region_case):
    case = region_case
    r = case.result

    def put_all(first, k):
        first[:] = case.clean[0][k]
    assert torch.allclose(case.recovered(0, put_all), torch.ones(r.pairs, dtype=torch.float64), atol=1e-9, rtol=0)
    outside = [t for t in range(17) if t not in TOKENS]
    # identical tokens: the corrupted run itself, up to float64 rounding (kernels differ with the batch's size and CPU)
    assert float(r.recovered[:, 0, outside].abs().max()) < 1e-12
    assert float(r.recovered[:, 0, TOKENS].abs().max()) > 1e-3
    assert r.patch_maps().shape == (len(case.model.blocks) + 1, 4, 4)
    assert r.region == REGION


@pytest.mark.parametrize("kind", ["micro", "registers"])
def test_the_class_token_after_the_last_block_recovers_all(kind):
    torch.manual_seed(5)
    model = (build_model({"zoo": "vit_micro_c10"}) if kind == "micro" else small_timm_vit(reg_tokens=2)).double()
    # pairs of images and any two classes: random timm heads barely tell images apart, so keep every pair
    r = patching.patching_analysis(model, uint8_images(6, seed=31), torch.arange(6), corruption="pairs", min_gap=-1e9)
    assert r.pairs == 6
    last = r.recovered[:, -1]  # (pairs, tokens) after the last block: the head reads token 0 only
    assert torch.allclose(last[:, 0], torch.ones(r.pairs, dtype=torch.float64), atol=1e-9, rtol=0)
    assert (last[:, 1:] == 0).all()


def test_pairs_closer_than_min_gap_are_dropped_and_counted(region_case):
    case = region_case
    gap = case.dc - case.dx
    min_gap = float(gap.median())
    r = patching.patching_analysis(case.model, case.images, case.labels, min_gap=min_gap, batch_size=3)
    assert r.dropped == int((gap < min_gap).sum()) >= 1
    assert r.pairs == len(case.images) - r.dropped and r.min_gap == min_gap
    assert torch.allclose(r.clean_diff, case.dc[gap >= min_gap], atol=1e-12, rtol=0)


def test_pairs_mode_takes_the_next_image_of_another_class():
    torch.manual_seed(6)
    model = build_model({"zoo": "vit_micro_c10"}).double()
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    case = Case(model, uint8_images(6, seed=32), labels, "pairs", -1e9)
    r = case.result
    assert r.classes.tolist() == [[0, 1], [0, 1], [1, 2], [2, 3], [2, 3], [3, 0]]
    assert r.dropped == 0 and r.region == []
    assert torch.allclose(r.corrupt_diff, case.dx, atol=1e-12, rtol=0)
    for layer, token in [(0, 0), (1, 5), (2, 0)]:
        def put(first, k, layer=layer, token=token):
            first[:, token] = case.clean[layer][k, token]
        assert torch.allclose(r.recovered[:, layer, token], case.recovered(layer, put), atol=1e-9, rtol=0)


def test_head_patching_matches_a_hand_run_with_the_clean_heads_slice(region_case):
    case = region_case
    model = case.model
    r = patching.patching_analysis(model, case.images, case.labels, what="head", min_gap=0.05)
    d = model.blocks[0].attn.head_dim
    assert r.recovered.shape == (r.pairs, 2, 2)
    with torch.no_grad():
        for layer in range(2):
            block = model.blocks[layer]
            z_clean = hand_attention(block.attn, block.norm1(case.clean[layer][case.keep]))
            for head in range(2):
                def swap(z, head=head, z_clean=z_clean):
                    z = z.clone()
                    z[..., head * d:(head + 1) * d] = z_clean[..., head * d:(head + 1) * d]
                    return z
                want = case.recovered(layer, edits={(layer, "z"): swap})
                assert torch.allclose(r.recovered[:, layer, head], want, atol=1e-9, rtol=0)
