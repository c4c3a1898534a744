import pytest
import torch

from vitlab.analysis import attention_maps


def _brute_rollout(attns, prefix, fusion, discard, pooled=False):
    """Rollout by loops: the class token's row, or (``pooled``) the mean of the patch rows, nothing protected."""
    b, _, n, _ = attns[0].shape
    out = []
    for s in range(b):
        result = [[float(i == j) for j in range(n)] for i in range(n)]
        for attn in attns:
            heads = attn[s].double()
            fused = [[{"mean": heads[:, i, j].mean(), "max": heads[:, i, j].max(), "min": heads[:, i, j].min()}[fusion]
                      .item() for j in range(n)] for i in range(n)]
            candidates = sorted((fused[i][j], i, j) for i in range(n) for j in range(n)
                                if pooled or (i != 0 and j != 0))
            for _, i, j in candidates[: min(int(n * n * discard), len(candidates))]:
                fused[i][j] = 0.0
            a = [[0.5 * fused[i][j] + 0.5 * (i == j) for j in range(n)] for i in range(n)]
            a = [[v / sum(row) for v in row] for row in a]
            result = [[sum(a[i][k] * result[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        rows = range(prefix, n) if pooled else [0]
        out.append([sum(result[i][j] for i in rows) / len(rows) for j in range(prefix, n)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.3), ("mean", 0.9)])
def test_attention_rollout_matches_brute_force(fusion, discard):
    gen = torch.Generator().manual_seed(2)
    attns = [torch.softmax(torch.randn(2, 3, 6, 6, generator=gen), -1) for _ in range(3)]
    got = attention_maps.attention_rollout(attns, num_prefix_tokens=2, head_fusion=fusion, discard_ratio=discard)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got.double(), _brute_rollout(attns, 2, fusion, discard), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix, fusion, discard", [(0, "mean", 0.0), (0, "max", 0.5), (1, "mean", 0.0),
                                                     (1, "min", 0.3)])
def test_pooled_rollout_is_the_mean_of_the_patch_rows_by_brute_force(prefix, fusion, discard):
    gen = torch.Generator().manual_seed(5)
    attns = [torch.softmax(torch.randn(2, 3, 5, 5, generator=gen), -1) for _ in range(2)]
    got = attention_maps.attention_rollout(attns, prefix, fusion, discard, pool="avg")
    assert got.shape == (2, 5 - prefix)
    torch.testing.assert_close(got.double(), _brute_rollout(attns, prefix, fusion, discard, pooled=True),
                               rtol=1e-5, atol=1e-6)


def test_pooled_rollout_of_attention_to_patch_0_is_not_patch_0s_row():
    # every patch attends only to patch 0: one layer's rollout row i is 0.5 on patch 0 and 0.5 on patch i, so the
    # mean of the n patch rows puts 0.5 + 0.5/n on patch 0 and 0.5/n on every other patch
    n = 4
    to_first = torch.zeros(1, 2, n, n)
    to_first[..., 0] = 1.0
    got = attention_maps.attention_rollout([to_first], 0, pool="avg")
    torch.testing.assert_close(got, torch.tensor([[0.5 + 0.5 / n] + [0.5 / n] * (n - 1)]))
    with pytest.raises(ValueError, match="no class token.*pool='avg'"):
        attention_maps.attention_rollout([to_first], 0)  # patch 0's row is no class token's
    with pytest.raises(ValueError, match="pool must be 'token' or 'avg'"):
        attention_maps.attention_rollout([to_first], 0, pool="max")


def test_attention_rollout_of_identity_attention_stays_on_the_class_token():
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_maps.attention_rollout([eye] * 4), torch.zeros(1, 4))
    # uniform attention, one layer: 0.5/N to every patch from the class token
    uniform = torch.full((1, 2, 5, 5), 0.2)
    torch.testing.assert_close(attention_maps.attention_rollout([uniform]), torch.full((1, 4), 0.1))


def test_attention_rollout_takes_a_layer_mapping_in_index_order():
    gen = torch.Generator().manual_seed(6)
    a, b, c = (torch.softmax(torch.randn(2, 3, 6, 6, generator=gen), -1) for _ in range(3))
    as_list = attention_maps.attention_rollout([a, b, c], num_prefix_tokens=2)
    assert not torch.allclose(as_list, attention_maps.attention_rollout([c, b, a], num_prefix_tokens=2))  # order matters
    torch.testing.assert_close(attention_maps.attention_rollout({2: c, 0: a, 1: b}, num_prefix_tokens=2), as_list,
                               rtol=0, atol=0)



# --- one image's attention, for display --------------------------------------------------


def _attention(heads, rows, cols, prefix, seed=6):
    n = prefix + rows * cols
    return torch.softmax(torch.randn(heads, n, n, generator=torch.Generator().manual_seed(seed)), -1)


@pytest.mark.parametrize("head", [None, 1])
def test_query_attention_matches_brute_force(head):
    rows, cols, prefix = 3, 4, 2
    attn = _attention(3, rows, cols, prefix)
    got = attention_maps.query_attention(attn, (rows, cols), prefix, (2, 1), head)
    heads = range(3) if head is None else [head]
    for r in range(rows):
        for c in range(cols):
            key = prefix + r * cols + c
            expected = sum(float(attn[h, prefix + 2 * cols + 1, key]) for h in heads) / len(heads)
            assert float(got[r, c]) == pytest.approx(expected, rel=1e-6)
    # uniform attention spreads 1/N over every key, prefix included
    uniform = torch.full((2, 1 + 4, 1 + 4), 0.2)
    torch.testing.assert_close(attention_maps.query_attention(uniform, (2, 2), 1, (0, 0)), torch.full((2, 2), 0.2))
    with pytest.raises(ValueError, match="outside"):
        attention_maps.query_attention(attn, (rows, cols), prefix, (3, 0))
    with pytest.raises(ValueError, match="prefix tokens"):
        attention_maps.query_attention(attn, (rows, cols), 1, (0, 0))


def test_class_token_attention_matches_brute_force():
    rows, cols, prefix = 2, 3, 1
    attns = [_attention(2, rows, cols, prefix, seed) for seed in (7, 8, 9)]
    got = attention_maps.class_token_attention(attns, (rows, cols), prefix)
    assert got.shape == (3, 2, rows, cols)
    for layer in range(3):
        for h in range(2):
            for r in range(rows):
                for c in range(cols):
                    assert float(got[layer, h, r, c]) == float(attns[layer][h, 0, prefix + r * cols + c])
    with pytest.raises(ValueError, match="no class token"):
        attention_maps.class_token_attention([torch.softmax(torch.randn(2, 6, 6), -1)], (rows, cols), 0)
    with pytest.raises(ValueError, match="no class token"):  # register tokens only: token 0 is a register
        attention_maps.class_token_attention(attns, (rows, cols), prefix, class_token=False)


def test_pooled_attention_is_the_mean_of_the_patch_queries():
    rows, cols, prefix = 2, 3, 1
    attns = [_attention(2, rows, cols, prefix, seed) for seed in (7, 8)]
    got = attention_maps.pooled_attention(attns, (rows, cols), prefix)
    assert got.shape == (2, 2, rows, cols)
    for layer in range(2):
        for h in range(2):
            for r in range(rows):
                for c in range(cols):
                    key = prefix + r * cols + c
                    expected = sum(float(attns[layer][h, q, key]) for q in range(prefix, prefix + 6)) / 6
                    assert float(got[layer, h, r, c]) == pytest.approx(expected, rel=1e-6)


def test_scale_to_max_divides_each_map_by_its_maximum():
    maps = torch.rand(2, 3, 4, 4)
    got = attention_maps.scale_to_max(maps)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(got[i, j], maps[i, j] / maps[i, j].max())
    assert torch.equal(attention_maps.scale_to_max(torch.zeros(1, 2, 2)), torch.zeros(1, 2, 2))
