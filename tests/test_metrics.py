import math

import numpy as np
import pytest
import timm
import torch

import vitlab
from vitlab.analysis import metrics


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


# --- position structure and mirror scores ---------------------------------------------------


def _sincos_embedding(rows, cols, dim):
    """The fixed 2-D sine-cosine position embedding of MAE (Transformer sincos per axis), (rows*cols, dim)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    angles = [p.flatten()[:, None] * omega for p in (r, c)]  # (n, dim/4) per axis
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], 1)


def _cosine(vectors):
    v = torch.nn.functional.normalize(vectors.double(), dim=-1)
    return v @ v.T  # (n, n)


def _loop_ranks(values):
    """Average ranks (1-based) by comparing every value with every other."""
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def _loop_pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def _brute_structure(sim, rows, cols):
    """Spearman correlations by loops over pairs of distinct patches; the partial one by its textbook formula."""
    sims, closeness, line = [], [], []
    patches = [(r, c) for r in range(rows) for c in range(cols)]
    for a in range(len(patches)):
        for b in range(a + 1, len(patches)):
            (r1, c1), (r2, c2) = patches[a], patches[b]
            sims.append(float(sim[a, b]))
            closeness.append(-math.hypot(r1 - r2, c1 - c2))
            line.append(float(r1 == r2 or c1 == c2))
    rank = {name: _loop_ranks(v) for name, v in (("s", sims), ("d", closeness), ("l", line))}
    sd, sl, ld = (_loop_pearson(rank[a], rank[b]) for a, b in (("s", "d"), ("s", "l"), ("l", "d")))
    return sd, (sl - sd * ld) / math.sqrt((1 - sd**2) * (1 - ld**2))


def test_rank_and_spearman_match_scipy():
    from scipy import stats

    x = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0])
    y = torch.tensor([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0, 4.0])
    np.testing.assert_array_equal(metrics._rank(x).numpy(), stats.rankdata(x.numpy()))
    assert metrics._spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert math.isnan(metrics._spearman(x, torch.ones_like(x)))


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_position_structure_matches_brute_force(grid):
    rows, cols = grid
    sim = _cosine(torch.randn(rows * cols, 6, generator=torch.Generator().manual_seed(1)))
    score = metrics.position_structure(sim.reshape(rows, cols, rows, cols), grid)
    distance, row_column = _brute_structure(sim, rows, cols)
    assert score.closeness == pytest.approx(distance, abs=1e-12)
    assert score.row_column == pytest.approx(row_column, abs=1e-12)
    with pytest.raises(ValueError, match="does not cover"):
        metrics.position_structure(sim, (rows, cols + 1))


def test_position_structure_closeness_matches_scipy_on_sincos():
    from scipy import stats

    rows, cols = 8, 8
    sim = _cosine(_sincos_embedding(rows, cols, 128))
    i, j = np.triu_indices(rows * cols, 1)
    distance = np.hypot(i // cols - j // cols, i % cols - j % cols)
    expected = -stats.spearmanr(sim.numpy()[i, j], distance).statistic
    assert metrics.position_structure(sim, (rows, cols)).closeness == pytest.approx(expected, abs=1e-12)


def test_position_structure_analytic_cases():
    rows, cols = 8, 8
    # Positive control: the MAE sincos embedding is nearly monotone in distance, with a row/column excess.
    sincos = metrics.position_structure(_cosine(_sincos_embedding(rows, cols, 128)), (rows, cols))
    assert sincos.closeness > 0.8 and sincos.row_column > 0.3
    # Similarity a strictly decreasing function of distance: closeness +1 exactly, no row/column excess.
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([r.flatten(), c.flatten()], 1).double()  # (n, 2)
    isotropic = metrics.position_structure(torch.exp(-torch.cdist(pos, pos) ** 2 / 8), (rows, cols))
    assert isotropic.closeness == pytest.approx(1.0, abs=1e-12) and isotropic.row_column == pytest.approx(0, abs=1e-6)
    # One-hot row plus one-hot column: similar exactly when in the same row or column.
    onehot = torch.cat([torch.nn.functional.one_hot(r.flatten(), rows), torch.nn.functional.one_hot(c.flatten(), cols)],
                       1)
    cross = metrics.position_structure(_cosine(onehot), (rows, cols))
    assert cross.row_column == pytest.approx(1.0, abs=1e-12) and 0 < cross.closeness < 0.5
    # Far patches the more similar: -1.
    far = metrics.position_structure(torch.cdist(pos, pos), (rows, cols))
    assert far.closeness == pytest.approx(-1.0, abs=1e-12)


def test_position_structure_of_random_embeddings_is_near_zero():
    gen = torch.Generator().manual_seed(0)
    scores = [metrics.position_structure(_cosine(torch.randn(64, 128, generator=gen)), (8, 8)) for _ in range(20)]
    distance = torch.tensor([s.closeness for s in scores])
    row_column = torch.tensor([s.row_column for s in scores])
    assert distance.abs().max() < 0.1 and row_column.abs().max() < 0.1
    assert abs(float(distance.mean())) < 0.03 and abs(float(row_column.mean())) < 0.03


def _brute_mirror(sim, rows, cols):
    at = lambda r1, c1, r2, c2: float(sim[r1 * cols + c1, r2 * cols + c2])  # noqa: E731
    mirror = [at(r, c, r, cols - 1 - c) for r in range(rows) for c in range(cols) if c != cols - 1 - c]
    neighbour = []
    for r in range(rows):
        for c in range(cols):
            near = [at(r, c, r + dr, c + dc) for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))
                    if 0 <= r + dr < rows and 0 <= c + dc < cols]
            neighbour.append(sum(near) / len(near))
    return sum(mirror) / len(mirror) if mirror else math.nan, sum(neighbour) / len(neighbour)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (2, 1)])
def test_mirror_score_matches_brute_force(grid):
    rows, cols = grid
    sim = torch.randn(rows * cols, rows * cols, generator=torch.Generator().manual_seed(2))  # need not be symmetric
    score = metrics.mirror_score(sim, grid)
    mirror, neighbour = _brute_mirror(sim, rows, cols)
    assert score.neighbour == pytest.approx(neighbour, abs=1e-12)
    if cols == 1:  # no patch has a mirror position other than itself
        assert math.isnan(score.mirror) and math.isnan(mirror)
        return
    assert score.mirror == pytest.approx(mirror, abs=1e-12) and score.excess == pytest.approx(mirror - neighbour,
                                                                                              abs=1e-12)


@pytest.mark.parametrize("cols", [8, 7])
def test_mirror_score_is_maximal_for_a_mirror_symmetric_embedding(cols):
    rows = 8
    emb = torch.randn(rows, cols, 32, generator=torch.Generator().manual_seed(3))
    emb = emb + emb.flip(1)  # e[r, c] = e[r, C-1-c]
    score = metrics.mirror_score(_cosine(emb.reshape(rows * cols, 32)), (rows, cols))
    assert score.mirror == pytest.approx(1.0, abs=1e-12)  # the largest a cosine similarity can be
    assert score.excess == pytest.approx(1.0 - score.neighbour, abs=1e-12) and score.excess > 0.5
    sincos = metrics.mirror_score(_cosine(_sincos_embedding(rows, cols, 128)), (rows, cols))
    assert sincos.mirror < 0.95 and sincos.excess < -0.05  # it tells left from right


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
    assert float(metrics.mean_attention_distance(uniform, (2, 2), (16, 16), renormalize=True)) == pytest.approx(
        expected, rel=1e-6)
    # without renormalising (the default), the 1/5 given to the class token carries no distance
    assert float(metrics.mean_attention_distance(uniform, (2, 2), (16, 16))) == pytest.approx(expected * 4 / 5,
                                                                                              rel=1e-6)
    self_only = torch.eye(n + 1)[None, None]
    assert float(metrics.mean_attention_distance(self_only, (2, 2), (16, 16))) == 0.0
    with pytest.raises(ValueError, match="prefix"):
        metrics.mean_attention_distance(uniform, (3, 3), (16, 16))


def _papers_distance(attn, rows, cols, patch):
    """Fig. 7 (right) as in google-research/vision_transformer issue #162, with plain loops.

    ``w = attn[example, head, 1:, 1:]``, the weighted sum of pixel distances per query,
    averaged over queries and examples: no renormalisation over patch keys.
    """
    examples, heads, tokens, _ = attn.shape
    out = []
    for head in range(heads):
        per_example = []
        for example in range(examples):
            total = 0.0
            for q in range(tokens - 1):
                for k in range(tokens - 1):
                    dy, dx = (q // cols - k // cols) * patch, (q % cols - k % cols) * patch
                    total += float(attn[example, head, 1 + q, 1 + k]) * math.sqrt(dy * dy + dx * dx)
            per_example.append(total / (tokens - 1))
        out.append(sum(per_example) / examples)
    return out


def test_default_distance_is_the_papers_formula():
    gen = torch.Generator().manual_seed(3)
    attn = torch.softmax(3 * torch.randn(3, 2, 1 + 12, 1 + 12, generator=gen), -1)  # a 3x4 grid + class token
    attn[:, :, :, 0] += 2.0  # the class token takes a large share, as in trained ViTs
    attn = attn / attn.sum(-1, keepdim=True)
    got = metrics.mean_attention_distance(attn, (3, 4), (4, 4))
    assert got.tolist() == pytest.approx(_papers_distance(attn, 3, 4, 4), rel=1e-5)
    stats = metrics.HeadStats()
    stats.update({0: attn}, (3, 4), (4, 4), 1)
    assert stats.result()["distance"][0].tolist() == pytest.approx(_papers_distance(attn, 3, 4, 4), rel=1e-5)
    renormalised = metrics.mean_attention_distance(attn, (3, 4), (4, 4), renormalize=True)
    assert (renormalised / got).min() > 1.5  # the other convention differs where the class token takes much


# --- references: uniform and local attention ----------------------------------------------------


def test_uniform_attention_distance_of_the_cifar_grid():
    centres = [(r, c) for r in range(8) for c in range(8)]
    pairs = [math.hypot(4 * (a - c), 4 * (b - d)) for a, b in centres for c, d in centres]
    mean = sum(pairs) / len(pairs)
    assert round(mean, 1) == 16.5
    assert metrics.uniform_attention_distance((8, 8), (4, 4), renormalize=True) == pytest.approx(mean, rel=1e-9)
    assert metrics.uniform_attention_distance((8, 8), (4, 4), 0) == pytest.approx(mean, rel=1e-9)
    assert metrics.uniform_attention_distance((8, 8), (4, 4)) == pytest.approx(mean * 64 / 65, rel=1e-9)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("grid, patch, prefix", [((8, 8), (4, 4), 1), ((3, 5), (8, 6), 2), ((4, 4), (16, 16), 0)])
def test_uniform_and_one_hot_attention_give_the_references(renormalize, grid, patch, prefix):
    tokens = grid[0] * grid[1] + prefix
    uniform = torch.full((2, 3, tokens, tokens), 1.0 / tokens)  # over every token, prefix tokens included
    got = metrics.mean_attention_distance(uniform, grid, patch, prefix, renormalize)
    expected = metrics.uniform_attention_distance(grid, patch, prefix, renormalize)
    torch.testing.assert_close(got, torch.full((3,), expected), rtol=1e-6, atol=0)
    diagonal = torch.eye(tokens).expand(2, 3, tokens, tokens)  # each token attends only to itself
    assert metrics.mean_attention_distance(diagonal, grid, patch, prefix, renormalize).abs().max() == 0


def _gaussian_attention(rows, cols, width, prefix):
    """Each patch query's attention exp(-d^2 / 2 width^2) over patch keys (d in patches), rows summing to 1."""
    n = rows * cols
    attn = torch.zeros(1, 1, prefix + n, prefix + n, dtype=torch.float64)
    attn[0, 0, :prefix, :prefix] = torch.eye(prefix)
    for q in range(n):
        for k in range(n):
            d2 = (q // cols - k // cols) ** 2 + (q % cols - k % cols) ** 2
            attn[0, 0, prefix + q, prefix + k] = math.exp(-d2 / (2 * width**2))
    return attn / attn.sum(-1, keepdim=True)


@pytest.mark.parametrize("renormalize", [True, False])
def test_local_gaussian_attention_gives_its_width(renormalize):
    rows = cols = 8
    patch, width = 4, 0.7  # a kernel 0.7 patches wide: nearly all weight on the patch and its 4 neighbours
    attn = _gaussian_attention(rows, cols, width, 1)
    expected = 0.0  # the kernel's mean distance, computed query by query
    for qy in range(rows):
        for qx in range(cols):
            w = {(ky, kx): math.exp(-((qy - ky) ** 2 + (qx - kx) ** 2) / (2 * width**2))
                 for ky in range(rows) for kx in range(cols)}
            norm = sum(w.values())
            expected += sum(v / norm * patch * math.hypot(qy - ky, qx - kx) for (ky, kx), v in w.items())
    expected /= rows * cols
    got = float(metrics.mean_attention_distance(attn, (rows, cols), (patch, patch), 1, renormalize))
    assert got == pytest.approx(expected, rel=1e-6)
    assert 2.0 < got < 0.3 * metrics.uniform_attention_distance((rows, cols), (patch, patch), 1, renormalize)


# --- rollout --------------------------------------------------------------------------------


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


# --- hybrid ViTs ---------------------------------------------------------------------------------


def test_a_hybrids_pixel_patch_and_token_receptive_field_by_hand():
    torch.manual_seed(0)
    hybrid = vitlab.models.build_model({"zoo": "hybrid_tiny_c10"})
    vit = vitlab.models.build_model({"zoo": "vit_tiny_c10"})
    assert metrics.is_hybrid(hybrid) and not metrics.is_hybrid(vit)
    assert metrics.pixel_patch_size(hybrid) == (4, 4) == metrics.pixel_patch_size(vit)
    assert metrics.patch_grid(hybrid) == (8, 8)
    # r: 1 -> 3 (conv1) -> 5 (max-pool k3, then jump 2) -> 9 -> 13 (layer1: two k3) -> 17 (layer2 k3 s2,
    # then jump 4) -> 25 (k3) -> 25 (1x1 projection)
    assert metrics.token_receptive_field(hybrid) == 25.0
    assert metrics.token_receptive_field(vit) == 4.0
    timm_hybrid = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=128, depth=1)
    assert metrics.pixel_patch_size(timm_hybrid) == (32, 32)  # a stride-4 stem, then 8x8 patches of its map
    # its stem: k7 s2 (r 7, jump 2), k3 s2 max-pool (r 11, jump 4), then the 8x8 projection (r 11 + 7*4)
    assert metrics.token_receptive_field(timm_hybrid) == 39.0


def test_embedding_filters_refuse_a_hybrid_and_position_similarity_reads_its_map():
    torch.manual_seed(0)
    hybrid = vitlab.models.build_model({"zoo": "hybrid_tiny_c10"})
    assert hybrid.patch_embed.proj.kernel_size == (1, 1)  # a conv that embedding_filters would accept as filters
    with pytest.raises(ValueError, match="hybrid ViT.*1x1 patches of a CNN's feature map.*no image filters"):
        metrics.embedding_filters(hybrid)
    sim = metrics.position_similarity(hybrid)
    pos = torch.nn.functional.normalize(hybrid.pos_embed[0, 1:].detach(), dim=-1)  # (64, D) after the class token
    assert sim.shape == (8, 8, 8, 8)
    assert float(sim[2, 3, 5, 1]) == pytest.approx(float(pos[2 * 8 + 3] @ pos[5 * 8 + 1]), abs=1e-6)
