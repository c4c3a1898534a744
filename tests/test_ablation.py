"""analysis.ablation: head and branch ablation against blocks re-run by hand with the head's slice (or branch)
replaced, a positive control whose one head carries the answer, the model restored after every analysis (also when
one raises), and the attention-distance link against scipy."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from conftest import hand_logits, hand_states, uint8_images
from vitlab.analysis import ablation, lens, patching
from vitlab.models import build_model, preprocess

N_REF = 7


@pytest.fixture(scope="module")
def micro():
    """A float64 random ``vit_micro_c10`` (2 blocks x 2 heads), 6 images labelled half by its own predictions,
    7 reference images, and the test's own clean logits (B, C)."""
    torch.manual_seed(1)
    model = build_model({"zoo": "vit_micro_c10"}).double()
    images, reference = uint8_images(6, seed=20), uint8_images(N_REF, seed=21)
    with torch.no_grad():
        clean = hand_logits(model, hand_states(model, preprocess(model, images))[-1])
    labels = torch.where(torch.arange(6) % 2 == 0, clean.argmax(-1), (clean.argmax(-1) + 3) % 10)
    return model, images, labels, reference, clean


def _hand_means(model, reference) -> dict[tuple[int, str], torch.Tensor]:
    """Per-position means (T, C) over ``reference`` of each block's heads' outputs, attention and MLP outputs,
    recorded by the test's own hand forward."""
    seen = {}

    def record(key):
        def f(t):
            seen[key] = t.mean(0)
            return t
        return f
    with torch.no_grad():
        hand_states(model, preprocess(model, reference), {(i, s): record((i, s)) for i in range(2)
                                                         for s in ("z", "attn", "mlp")})
    return seen


def _drops(model, images, labels, clean, edits):
    """(accuracy drop, true-logit drop) per image of a hand forward with ``edits``."""
    with torch.no_grad():
        got = hand_logits(model, hand_states(model, preprocess(model, images), edits)[-1])
    take = lambda logits: logits.gather(1, labels[:, None])[:, 0]  # noqa: E731
    return ((clean.argmax(-1) == labels).double() - (got.argmax(-1) == labels).double(), take(clean) - take(got))


def _replace_heads(heads, d, value):
    def f(z):
        z = z.clone()
        for h in heads:
            z[..., h * d:(h + 1) * d] = 0.0 if value is None else value[..., h * d:(h + 1) * d]
        return z
    return f


@pytest.mark.parametrize("kind", ablation.KINDS)
def test_head_and_branch_drops_match_blocks_run_by_hand(micro, kind):
    model, images, labels, reference, clean = micro
    result = ablation.ablation_analysis(model, images, labels, kind=kind, reference=reference, top_k=3, batch_size=4)
    means, d = _hand_means(model, reference), model.blocks[0].attn.head_dim
    value = lambda layer, site: None if kind == "zero" else means[(layer, site)]  # noqa: E731
    hand = {}
    for layer in range(2):
        for head in range(2):
            edit = {(layer, "z"): _replace_heads([head], d, value(layer, "z"))}
            acc, logit = hand[layer, head] = _drops(model, images, labels, clean, edit)
            assert torch.equal(result.head_accuracy[:, layer, head], acc)
            assert torch.allclose(result.head_logit[:, layer, head], logit, atol=1e-9, rtol=0)
        for site in ("attn", "mlp"):
            v = value(layer, site)
            acc, logit = _drops(model, images, labels, clean,
                                {(layer, site): lambda t, v=v: torch.zeros_like(t) + (0.0 if v is None else v)})
            assert torch.equal(getattr(result, f"{site}_accuracy")[:, layer], acc)
            assert torch.allclose(getattr(result, f"{site}_logit")[:, layer], logit, atol=1e-9, rtol=0)
    order = sorted(hand, key=lambda ih: (-float(hand[ih][0].mean()), -float(hand[ih][1].mean())))
    assert result.top_heads == order[:3]
    for k in range(1, 4):  # the first k top heads together
        by_layer = {}
        for layer, head in result.top_heads[:k]:
            by_layer.setdefault(layer, []).append(head)
        edits = {(layer, "z"): _replace_heads(hs, d, value(layer, "z")) for layer, hs in by_layer.items()}
        acc, logit = _drops(model, images, labels, clean, edits)
        assert torch.equal(result.top_accuracy[:, k - 1], acc)
        assert torch.allclose(result.top_logit[:, k - 1], logit, atol=1e-9, rtol=0)
    assert torch.equal(result.clean_correct, (clean.argmax(-1) == labels).double())
    assert result.reference_images == (0 if kind == "zero" else N_REF)


def test_head_effects_are_the_mean_ablation_matrix(micro):
    model, images, labels, reference, _ = micro
    full = ablation.ablation_analysis(model, images, labels, kind="mean", reference=reference)
    effects = ablation.head_effects(model, images, labels, reference)
    assert torch.equal(effects["accuracy"], full.mean("head_accuracy"))
    assert torch.allclose(effects["logit"], full.mean("head_logit"), atol=1e-12, rtol=0)


def _one_head_model() -> torch.nn.Module:
    """``vit_micro_c10`` set so that head 0 of block 1 decides the class: the class token starts at zero, block 0
    and the MLPs write nothing, and block 1's other head is scaled to 1e-3."""
    torch.manual_seed(2)
    model = build_model({"zoo": "vit_micro_c10"}).double()
    d = model.blocks[1].attn.head_dim
    with torch.no_grad():
        model.cls_token.zero_()
        model.pos_embed[:, 0].zero_()
        model.blocks[0].attn.proj.weight.zero_()
        for block in model.blocks:
            block.attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_()
            block.mlp.fc2.bias.zero_()
        model.blocks[1].attn.proj.weight[:, d:] *= 1e-3
    return model


@pytest.mark.parametrize("kind", ablation.KINDS)
def test_positive_control_the_head_that_carries_the_answer_comes_first(kind):
    model = _one_head_model()
    # images of one random colour each: the head's output, and so the class, differs from image to image
    colours = torch.randint(0, 256, (24, 3, 1, 1), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    images = colours.expand(-1, -1, 32, 32).contiguous()
    with torch.no_grad():
        labels = model(preprocess(model, images)).argmax(-1)
    assert len(labels.unique()) >= 3
    result = ablation.ablation_analysis(model, images[:16], labels[:16], kind=kind, reference=images[16:], top_k=2)
    acc = result.mean("head_accuracy")
    assert result.top_heads[0] == (1, 0)
    assert acc[1, 0] >= 0.5 and float(acc.flatten()[[0, 1, 3]].abs().max()) <= 0.1, acc
    assert float(result.mean("head_logit")[0].abs().max()) == 0.0  # block 0 writes nothing


# --- restoration: weights, hooks, fused-attention flags, train/eval mode --------------------------------------


ANALYSES = {
    "lens": lambda m, x, y, r: lens.logit_lens_analysis(m, x, y, batch_size=2),
    "attribution": lambda m, x, y, r: lens.attribution_analysis(m, x, y, batch_size=2),
    "ablation": lambda m, x, y, r: ablation.ablation_analysis(m, x, y, kind="mean", reference=r, batch_size=2),
    "patching-heads": lambda m, x, y, r: patching.patching_analysis(m, x, y, what="head", min_gap=-1e9,
                                                                    batch_size=2),
    "patching-resid": lambda m, x, y, r: patching.patching_analysis(m, x, y, corruption="pairs", min_gap=-1e9,
                                                                    batch_size=2),
}


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(m.training, getattr(m, "fused_attn", None),
              {t: list(getattr(m, t)) for t in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                                                 "_forward_pre_hooks_with_kwargs", "_backward_hooks")})
             for m in model.modules()])


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("name", list(ANALYSES))
def test_the_model_comes_back_exactly(name, fail):
    torch.manual_seed(4)
    model = build_model({"zoo": "vit_micro_c10"}).train()
    model.blocks[0].attn.fused_attn = False  # a user's choice the analysis must keep
    calls = []

    def user_hook(_module, _args, _out):  # the user's own hook: kept; on request it fails on the third call
        calls.append(1)
        if fail and len(calls) == 3:
            raise RuntimeError("injected")
    model.blocks[1].register_forward_hook(user_hook)
    before = _snapshot(model)
    images, labels = uint8_images(6, seed=22), torch.tensor([0, 1, 2, 3, 4, 5])
    if fail:
        with pytest.raises(RuntimeError, match="injected"):
            ANALYSES[name](model, images, labels, uint8_images(4, seed=23))
    else:
        ANALYSES[name](model, images, labels, uint8_images(4, seed=23))
    after = _snapshot(model)
    assert len(calls) >= 3  # the hook ran inside the analysis
    assert before[0].keys() == after[0].keys() and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1]
    assert model.training and model.blocks[0].attn.fused_attn is False


# --- the link to attention distance ----------------------------------------------------------------------------


def _fake_ablation(head_accuracy: torch.Tensor, top: int = 3) -> ablation.AblationResult:
    n, depth, _ = head_accuracy.shape
    gen = torch.Generator().manual_seed(5)
    z = torch.zeros(n, depth, dtype=torch.float64)
    return ablation.AblationResult(
        kind="mean", reference_images=8, labels=torch.zeros(n, dtype=torch.long),
        clean_correct=(torch.rand(n, generator=gen) < 0.7).double(), clean_logit=torch.zeros(n, dtype=torch.float64),
        head_accuracy=head_accuracy, head_logit=torch.randn(head_accuracy.shape, generator=gen, dtype=torch.float64),
        attn_accuracy=z, attn_logit=z, mlp_accuracy=z, mlp_logit=z, top_heads=[(0, 0)] * top,
        top_accuracy=torch.randint(-1, 2, (n, top), generator=gen).double(),
        top_logit=torch.zeros(n, top, dtype=torch.float64), seconds=0.0)


@pytest.mark.parametrize("measure", ["accuracy", "logit"])
def test_link_matches_scipy_spearman_and_a_median_split_by_hand(measure):
    gen = torch.Generator().manual_seed(6)
    n, depth, heads = 12, 6, 4  # 24 heads: an even count, so the median lies between two heads
    distances = torch.rand(n, depth, heads, generator=gen, dtype=torch.float64) * 16
    effects = torch.randint(-1, 2, (n, depth, heads), generator=gen).double()  # accuracy drops: many ties
    fake = _fake_ablation(effects)
    result = ablation.link_analysis(distances, fake, measure=measure, resamples=40, seed=7)
    dist = distances.mean(0).flatten().numpy()
    eff = getattr(fake, f"head_{measure}").mean(0).flatten().numpy()
    assert result.spearman == pytest.approx(scipy.stats.spearmanr(dist, eff).statistic, abs=1e-12)
    split = float(np.median(dist))
    local = dist < split
    assert local.sum() == len(dist) // 2
    assert result.split == pytest.approx(split, abs=1e-12)
    assert result.local == pytest.approx(eff[local].mean(), abs=1e-12)
    assert result.global_ == pytest.approx(eff[~local].mean(), abs=1e-12)
    assert result.difference == pytest.approx(eff[local].mean() - eff[~local].mean(), abs=1e-12)
    assert result.difference_low <= result.difference <= result.difference_high
    # the interval over images: each resample's correlation by scipy, on the same resampled images
    picks = torch.randint(0, n, (40, n), generator=torch.Generator().manual_seed(7))
    per = getattr(fake, f"head_{measure}")
    rhos = [scipy.stats.spearmanr(distances[p].mean(0).flatten(), per[p].mean(0).flatten()).statistic
            for p in picks]
    rhos = np.nan_to_num(rhos)
    assert [result.spearman_low, result.spearman_high] == pytest.approx(list(np.quantile(rhos, [0.025, 0.975])),
                                                                        abs=1e-9)
    assert [k for k, *_ in result.top_k] == [1, 2, 3]
    assert [a for _, a, _, _ in result.top_k] == pytest.approx(fake.top_accuracy.mean(0).tolist(), abs=1e-12)
    assert result.accuracy == pytest.approx(float(fake.clean_correct.mean()))


@pytest.mark.gpu
def test_every_analysis_on_the_gpu_matches_the_cpu(micro):
    """Means are kept on the CPU (site_means): the edits must bring them to the model's device."""
    model, images, labels, reference, _ = micro
    gpu = build_model({"zoo": "vit_micro_c10"}).double()
    gpu.load_state_dict(model.state_dict())
    gpu.cuda()
    for kind in ablation.KINDS:
        want = ablation.ablation_analysis(model, images, labels, kind=kind, reference=reference)
        got = ablation.ablation_analysis(gpu, images, labels, kind=kind, reference=reference)
        for name in ("head_logit", "attn_logit", "mlp_logit", "top_logit"):
            assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-9, rtol=0), (kind, name)
    for what in patching.WHAT:
        want = patching.patching_analysis(model, images, labels, what=what, min_gap=-1e9)
        got = patching.patching_analysis(gpu, images, labels, what=what, min_gap=-1e9)
        assert torch.allclose(got.recovered, want.recovered, atol=1e-6, rtol=0), what
    want, got = lens.attribution_analysis(model, images, labels), lens.attribution_analysis(gpu, images, labels)
    assert torch.allclose(got.true, want.true, atol=1e-9, rtol=0)
    want, got = lens.logit_lens_analysis(model, images, labels), lens.logit_lens_analysis(gpu, images, labels)
    assert torch.allclose(got.kl, want.kl, atol=1e-6, rtol=0)  # stored in float32
