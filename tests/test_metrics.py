import math

import numpy as np
import pytest
import timm
import torch
from conftest import sklearn_probe

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


# --- embedding filters ---------------------------------------------------------------


def test_embedding_filters_recover_known_components():
    """Filters = mean + three orthonormal patterns with variances 9, 4, 1: PCA finds them."""
    model = vitlab.load_model("vit_tiny_c10", device="cpu")
    d, c, p, _ = model.patch_embed.proj.weight.shape
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(c * p * p, 3, generator=gen, dtype=torch.float64))  # (CPP, 3)
    coeffs = torch.randn(d, 3, generator=gen, dtype=torch.float64)
    coeffs = (coeffs - coeffs.mean(0)) / coeffs.std(0, unbiased=False)  # exactly unit variance
    coeffs, _ = torch.linalg.qr(coeffs)  # decorrelated columns
    coeffs = coeffs * torch.tensor([3.0, 2.0, 1.0])
    with torch.no_grad():
        model.patch_embed.proj.weight.copy_((5.0 + coeffs @ basis.T).reshape(d, c, p, p))
    filters, ratio = metrics.embedding_filters(model, k=3)
    assert filters.shape == (3, c, p, p)
    for i in range(3):
        assert abs(float(filters[i].flatten().double() @ basis[:, i])) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(ratio, torch.tensor([9.0, 4.0, 1.0]) / 14, rtol=1e-4, atol=1e-5)


def test_embedding_filters_variance_matches_covariance_eigenvalues(tiny_vit):
    w = tiny_vit.patch_embed.proj.weight.detach().double().flatten(1)  # (D, CPP)
    d = len(w)
    mean = [sum(w[i, j] for i in range(d)) / d for j in range(w.shape[1])]
    centred = torch.stack([torch.stack([w[i, j] - mean[j] for j in range(w.shape[1])]) for i in range(d)])
    eig = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    _, ratio = metrics.embedding_filters(tiny_vit, k=5)
    torch.testing.assert_close(ratio.double(), eig[:5] / eig.sum(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="k must be in"):
        metrics.embedding_filters(tiny_vit, k=500)


# --- attention distance -----------------------------------------------------------------


def _brute_distance(attn, grid, patch, prefix, renormalize):
    b, h, n, _ = attn.shape
    rows, cols = grid
    out = []
    for head in range(h):
        total = 0.0
        for s in range(b):
            for q in range(n - prefix):
                weights = [float(attn[s, head, prefix + q, prefix + k]) for k in range(n - prefix)]
                norm = sum(weights) if renormalize else 1.0
                qy, qx = divmod(q, cols)
                for k, wgt in enumerate(weights):
                    ky, kx = divmod(k, cols)
                    total += wgt / norm * math.hypot((qy - ky) * patch[0], (qx - kx) * patch[1])
        out.append(total / (b * (n - prefix)))
    return torch.tensor(out)


@pytest.mark.parametrize("renormalize", [True, False])
def test_mean_attention_distance_matches_brute_force(renormalize):
    attn = torch.softmax(torch.randn(2, 3, 1 + 6, 1 + 6, generator=torch.Generator().manual_seed(1)), -1)
    got = metrics.mean_attention_distance(attn, (2, 3), (4, 5), 1, renormalize)
    torch.testing.assert_close(got.double(), _brute_distance(attn, (2, 3), (4, 5), 1, renormalize).double(),
                               rtol=1e-5, atol=1e-5)


def test_mean_attention_distance_analytic_cases():
    n = 4  # a 2x2 grid of 16-pixel patches, one class token
    uniform = torch.full((1, 1, n + 1, n + 1), 1.0 / (n + 1))
    expected = (0 + 16 + 16 + 16 * math.sqrt(2)) / 4  # from any patch to all four
    assert float(metrics.mean_attention_distance(uniform, (2, 2), (16, 16))) == pytest.approx(expected, rel=1e-6)
    # without renormalising, the 1/5 given to the class token carries no distance
    assert float(metrics.mean_attention_distance(uniform, (2, 2), (16, 16), renormalize=False)) == pytest.approx(
        expected * 4 / 5, rel=1e-6)
    self_only = torch.eye(n + 1)[None, None]
    assert float(metrics.mean_attention_distance(self_only, (2, 2), (16, 16))) == 0.0
    with pytest.raises(ValueError, match="prefix"):
        metrics.mean_attention_distance(uniform, (3, 3), (16, 16))


# --- rollout --------------------------------------------------------------------------------


def _brute_rollout(attns, prefix, fusion, discard):
    b, _, n, _ = attns[0].shape
    out = []
    for s in range(b):
        result = [[float(i == j) for j in range(n)] for i in range(n)]
        for attn in attns:
            heads = attn[s].double()
            fused = [[{"mean": heads[:, i, j].mean(), "max": heads[:, i, j].max(), "min": heads[:, i, j].min()}[fusion]
                      .item() for j in range(n)] for i in range(n)]
            candidates = sorted((fused[i][j], i, j) for i in range(n) for j in range(n) if i != 0 and j != 0)
            for _, i, j in candidates[: min(int(n * n * discard), len(candidates))]:
                fused[i][j] = 0.0
            a = [[0.5 * fused[i][j] + 0.5 * (i == j) for j in range(n)] for i in range(n)]
            a = [[v / sum(row) for v in row] for row in a]
            result = [[sum(a[i][k] * result[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        out.append(result[0][prefix:])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.3), ("mean", 0.9)])
def test_attention_rollout_matches_brute_force(fusion, discard):
    gen = torch.Generator().manual_seed(2)
    attns = [torch.softmax(torch.randn(2, 3, 6, 6, generator=gen), -1) for _ in range(3)]
    got = metrics.attention_rollout(attns, num_prefix_tokens=2, head_fusion=fusion, discard_ratio=discard)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got.double(), _brute_rollout(attns, 2, fusion, discard), rtol=1e-5, atol=1e-6)


def test_attention_rollout_of_identity_attention_stays_on_the_class_token():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(metrics.attention_rollout([eye] * 4), torch.zeros(1, 4))
    # uniform attention, one layer: 0.5/N to every patch from the class token
    uniform = torch.full((1, 2, 5, 5), 0.2)
    torch.testing.assert_close(metrics.attention_rollout([uniform]), torch.full((1, 4), 0.1))


def test_attention_rollout_takes_a_layer_mapping_in_index_order():
    gen = torch.Generator().manual_seed(6)
    a, b, c = (torch.softmax(torch.randn(2, 3, 6, 6, generator=gen), -1) for _ in range(3))
    as_list = metrics.attention_rollout([a, b, c], num_prefix_tokens=2)
    assert not torch.allclose(as_list, metrics.attention_rollout([c, b, a], num_prefix_tokens=2))  # order matters
    torch.testing.assert_close(metrics.attention_rollout({2: c, 0: a, 1: b}, num_prefix_tokens=2), as_list,
                               rtol=0, atol=0)


# --- CKA ------------------------------------------------------------------------------------


def _brute_linear_cka(x, y):
    """Feature-space formula: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((y.T @ x).pow(2).sum() / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt()))


def _brute_unbiased_hsic(k, l):
    """Song et al. (2012) U-statistic over all ordered quadruples of distinct indices."""
    import itertools

    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return float(total) / (n * (n - 1) * (n - 2) * (n - 3))


def test_cka_matches_brute_force_and_analytic_properties():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 7, generator=gen, dtype=torch.float64), torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = y + x[:, :5]
    assert metrics.cka(x, y) == pytest.approx(_brute_linear_cka(x, y), rel=1e-9)
    assert metrics.cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(7, 7, generator=gen, dtype=torch.float64))
    for unbiased in (False, True):
        base = metrics.cka(x, y, unbiased=unbiased)
        assert metrics.cka(x @ q, y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)
        assert metrics.cka(x * 3.7, y, unbiased=unbiased) == pytest.approx(base, rel=1e-9)


def test_unbiased_cka_matches_u_statistic():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(7, 3, generator=gen).double(), torch.randn(7, 2, generator=gen).double()
    k, l = x @ x.T, y @ y.T
    expected = _brute_unbiased_hsic(k, l) / math.sqrt(_brute_unbiased_hsic(k, k) * _brute_unbiased_hsic(l, l))
    assert metrics.cka(x, y, unbiased=True) == pytest.approx(expected, rel=1e-9)


def test_cka_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 4 samples"):
        metrics.cka(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="constant"):
        metrics.cka(torch.ones(10, 3), torch.randn(10, 2))
    with pytest.raises(ValueError, match="same examples"):
        metrics.cka(torch.randn(10, 3), torch.randn(11, 2))


def test_minibatch_cka_row_mismatch_says_what_cka_says():
    x, y = torch.randn(10, 3), torch.randn(8, 2)
    with pytest.raises(ValueError) as single:
        metrics.cka(x, y)
    with pytest.raises(ValueError) as batched:
        metrics.MinibatchCKA(1, 1).update([x], [y])
    assert str(batched.value) == str(single.value).replace("x and y", "xs[0] and ys[0]")
    with pytest.raises(ValueError, match=r"xs\[0\] and xs\[1\] must hold the same examples: 10 vs 8 rows"):
        metrics.MinibatchCKA(2, 1).update([x, torch.randn(8, 3)], [torch.randn(10, 2)])


def test_minibatch_cka_sums_unbiased_hsic_over_batches():
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(18, 4, generator=gen) for _ in range(2)]
    ys = [xs[0][:, :2] + 0.5 * torch.randn(18, 2, generator=gen)]
    acc = metrics.MinibatchCKA(2, 1)
    for start in range(0, 18, 6):
        acc.update([x[start:start + 6] for x in xs], [y[start:start + 6] for y in ys])
    got = acc.compute()
    assert got.shape == (2, 1)
    for i, x in enumerate(xs):
        parts = [(x[s:s + 6].double(), ys[0][s:s + 6].double()) for s in range(0, 18, 6)]
        xy = sum(_brute_unbiased_hsic(a @ a.T, b @ b.T) for a, b in parts)
        xx = sum(_brute_unbiased_hsic(a @ a.T, a @ a.T) for a, _ in parts)
        yy = sum(_brute_unbiased_hsic(b @ b.T, b @ b.T) for _, b in parts)
        assert float(got[i, 0]) == pytest.approx(xy / math.sqrt(xx * yy), rel=1e-5)
    one = metrics.MinibatchCKA(1, 1)
    one.update([xs[0]], [ys[0]])
    assert float(one.compute()) == pytest.approx(metrics.cka(xs[0], ys[0], unbiased=True), rel=1e-6)


def test_head_stats_memory_does_not_grow():
    stats = metrics.HeadStats()
    attn = {0: torch.softmax(torch.randn(4, 2, 5, 5), -1)}
    stats.update(attn, (2, 2), (8, 8), 1)
    sizes = [t.numel() for t in stats.distance.values()]
    for _ in range(5):
        stats.update(attn, (2, 2), (8, 8), 1)
    assert [t.numel() for t in stats.distance.values()] == sizes and stats.images == 24
    torch.testing.assert_close(stats.result()["distance"][0],
                               metrics.mean_attention_distance(attn[0], (2, 2), (8, 8)))


def test_receptive_fields_by_hand():
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, stride=1, padding=1)
            self.block = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=2, dilation=2))
            self.downsample = nn.Conv2d(4, 4, 7, stride=2)  # a shortcut: does not widen the field
            self.pool = nn.MaxPool2d(2, 2)

    # r: 1 -> 3 (stem) -> 5 (k3, jump 1) -> 5 + 2*2*2 = 13 (dilated k3, jump 2) -> 13 + 1*2 = 15 (pool)
    assert metrics.receptive_fields(Net()) == [("stem", 3.0), ("block", 13.0), ("pool", 15.0)]
    fields = dict(metrics.receptive_fields(vitlab.load_model("resnet_tiny_c10", device="cpu")))
    assert fields["conv1"] == 3 and fields["layer1.1"] == 11 and fields["layer4.1"] == 109


@pytest.mark.parametrize("n, d", [(40, 8), (12, 30)])  # primal (n >= d) and dual (n < d) forms
def test_ridge_probe_matches_scikit_learn(n, d):
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(n, d, generator=gen), torch.arange(n) % 4
    x_test = torch.randn(25, d, generator=gen)
    expected_w, expected_pred = sklearn_probe(x, y, x_test, 3.0, 4)
    probe = metrics.ridge_classifier(x, y, 4, l2=3.0)
    np.testing.assert_allclose(probe[0].numpy(), expected_w, rtol=1e-7, atol=1e-9)
    assert metrics.ridge_predict(probe, x_test).tolist() == expected_pred.tolist()


def test_ridge_probe_separates_separable_classes():
    # Class k sits at 10 * e_k plus small noise: any sensible probe is perfect.
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = 10 * torch.eye(5)[y] + 0.1 * torch.randn(60, 5, generator=gen)
    y_test = torch.arange(30) % 3
    x_test = 10 * torch.eye(5)[y_test] + 0.1 * torch.randn(30, 5, generator=gen)
    assert metrics.fewshot_accuracy(x, y, x_test, y_test, 3, l2=1.0) == 1.0
    with pytest.raises(ValueError, match="l2 must be positive"):
        metrics.ridge_classifier(x, y, 3, l2=0)


# --- one image's attention, for display --------------------------------------------------


def _attention(heads, rows, cols, prefix, seed=6):
    n = prefix + rows * cols
    return torch.softmax(torch.randn(heads, n, n, generator=torch.Generator().manual_seed(seed)), -1)


@pytest.mark.parametrize("head", [None, 1])
def test_query_attention_matches_brute_force(head):
    rows, cols, prefix = 3, 4, 2
    attn = _attention(3, rows, cols, prefix)
    got = metrics.query_attention(attn, (rows, cols), prefix, (2, 1), head)
    heads = range(3) if head is None else [head]
    for r in range(rows):
        for c in range(cols):
            key = prefix + r * cols + c
            expected = sum(float(attn[h, prefix + 2 * cols + 1, key]) for h in heads) / len(heads)
            assert float(got[r, c]) == pytest.approx(expected, rel=1e-6)
    # uniform attention spreads 1/N over every key, prefix included
    uniform = torch.full((2, 1 + 4, 1 + 4), 0.2)
    torch.testing.assert_close(metrics.query_attention(uniform, (2, 2), 1, (0, 0)), torch.full((2, 2), 0.2))
    with pytest.raises(ValueError, match="outside"):
        metrics.query_attention(attn, (rows, cols), prefix, (3, 0))
    with pytest.raises(ValueError, match="prefix tokens"):
        metrics.query_attention(attn, (rows, cols), 1, (0, 0))


def test_class_token_attention_matches_brute_force():
    rows, cols, prefix = 2, 3, 1
    attns = [_attention(2, rows, cols, prefix, seed) for seed in (7, 8, 9)]
    got = metrics.class_token_attention(attns, (rows, cols), prefix)
    assert got.shape == (3, 2, rows, cols)
    for layer in range(3):
        for h in range(2):
            for r in range(rows):
                for c in range(cols):
                    assert float(got[layer, h, r, c]) == float(attns[layer][h, 0, prefix + r * cols + c])
    with pytest.raises(ValueError, match="no class token"):
        metrics.class_token_attention([torch.softmax(torch.randn(2, 6, 6), -1)], (rows, cols), 0)


def test_scale_to_max_divides_each_map_by_its_maximum():
    maps = torch.rand(2, 3, 4, 4)
    got = metrics.scale_to_max(maps)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(got[i, j], maps[i, j] / maps[i, j].max())
    assert torch.equal(metrics.scale_to_max(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))
