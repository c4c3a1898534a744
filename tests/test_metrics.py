import math

import pytest
import timm
import torch

import vitlab
from vitlab import metrics


def _brute_force_similarity(vectors, rows, cols):
    """Cosine similarity by explicit loops over patch pairs, in float64."""
    out = torch.zeros(rows, cols, rows, cols, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            a = vectors[i * cols + j].double()
            for k in range(rows):
                for l in range(cols):
                    b = vectors[k * cols + l].double()
                    out[i, j, k, l] = (a @ b) / math.sqrt((a @ a) * (b @ b))
    return out


def test_position_similarity_matches_brute_force_and_drops_class_token(tiny_vit):
    sim = metrics.position_similarity(tiny_vit)
    assert sim.shape == (4, 4, 4, 4)
    expected = _brute_force_similarity(tiny_vit.pos_embed[0, 1:].detach(), 4, 4)
    torch.testing.assert_close(sim.double(), expected, rtol=1e-5, atol=1e-5)


def test_position_similarity_analytic_angles():
    """Embeddings at angle theta(r, c) give similarity cos(theta1 - theta2)."""
    model = vitlab.load_model("vit_tiny_c10", device="cpu")
    rows, cols = model.patch_embed.grid_size
    theta = torch.linspace(0, math.pi, rows * cols)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, 0, 5] = 7.0  # the class token's entry must not leak into any patch
        model.pos_embed[0, 1:, 0] = torch.cos(theta)
        model.pos_embed[0, 1:, 1] = torch.sin(theta)
    sim = metrics.position_similarity(model).reshape(rows * cols, rows * cols)
    expected = torch.cos(theta[:, None] - theta[None, :])
    torch.testing.assert_close(sim, expected, rtol=0, atol=1e-5)


def test_position_similarity_with_registers_and_no_embed_class():
    """Registers and class token hold no position here: pos_embed covers patches only."""
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=48, depth=1,
                              reg_tokens=4, no_embed_class=True)
    assert model.num_prefix_tokens == 5 and model.pos_embed.shape[1] == 9
    sim = metrics.position_similarity(model)
    expected = _brute_force_similarity(model.pos_embed[0].detach(), 3, 3)
    torch.testing.assert_close(sim.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.diagonal(sim.reshape(9, 9)), torch.ones(9))


def test_position_similarity_non_square_grid():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 64), depth=1)
    sim = metrics.position_similarity(model)
    assert sim.shape == (2, 4, 2, 4)
    torch.testing.assert_close(sim.double(), _brute_force_similarity(model.pos_embed[0, 1:].detach(), 2, 4),
                               rtol=1e-5, atol=1e-5)


def test_position_similarity_rejects_models_without_position_embeddings():
    resnet = vitlab.load_model("resnet_tiny_c10", device="cpu")
    with pytest.raises(ValueError, match="no learned position embeddings"):
        metrics.position_similarity(resnet)
