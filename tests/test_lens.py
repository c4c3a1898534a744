"""analysis.lens: the logit lens and direct logit attribution, each against the model's own output and a forward
computed by hand in the test (tests/conftest.py: attention from the qkv weights)."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import vitlab
from conftest import hand_attention, hand_logits, hand_states, small_timm_vit, uint8_images
from vitlab.analysis import lens
from vitlab.models import build_model, preprocess
from vitlab.training import zoo

ZOO = [n for family in ("vit", "hybrid") for n in zoo.available(family) if n in zoo.ENTRIES]
TIMM = {  # random timm ViTs the decomposition must also pass exactly
    "avg-fc_norm-layerscale": dict(global_pool="avg", class_token=False, init_values=0.1),
    "token-registers": dict(reg_tokens=2),
    "avg-norm-no-fc_norm": dict(global_pool="avg", fc_norm=False, init_values=0.1),
    "token-qk_norm-no-biases": dict(qk_norm=True, qkv_bias=False, proj_bias=False),
}


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, nn.Module]:
    """Every zoo ViT and hybrid, loaded once (random weights where no checkpoint is committed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no trained checkpoint: random weights"
        return {name: vitlab.load_model(name, device="cpu") for name in ZOO}


def _model_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters())
    with torch.no_grad():
        return model(preprocess(model, images).to(p.dtype))


def _check_sum(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, tol: float) -> None:
    """The parts plus the constant add up to the model's own logit of the label; the constant is the head's bias and
    the final norm's beta through the head."""
    result = lens.attribution_analysis(model, images, labels)
    logit = _model_logits(model, images).gather(1, labels[:, None])[:, 0].cpu()
    norm = model.norm if isinstance(model.norm, nn.LayerNorm) else model.fc_norm
    beta = norm.bias if isinstance(norm, nn.LayerNorm) else torch.zeros(model.head.in_features)
    constant = model.head.bias[labels] + model.head.weight[labels] @ beta.detach()
    bound = tol * (1 + logit.abs())
    assert ((result.logit - logit).abs() <= bound).all()
    assert ((result.constant - constant.detach()).abs() <= bound).all()
    assert ((result.true.sum(1) + result.constant - logit).abs() <= bound).all(), \
        (result.true.sum(1) + result.constant - logit).abs().max()
    assert len(result.parts) == 1 + result.depth * (result.heads + 2)


@pytest.mark.parametrize("name", ZOO)
def test_attribution_parts_add_up_to_the_logit_on_every_zoo_vit_and_hybrid(zoo_models, name):
    model, images = zoo_models[name], uint8_images(3, seed=1)
    labels = torch.tensor([0, 3, 9])
    _check_sum(model, images, labels, 1e-4)
    _check_sum(copy.deepcopy(model).double(), images, labels, 1e-9)


@pytest.mark.parametrize("kind", list(TIMM))
def test_attribution_parts_add_up_on_random_timm_vits(kind):
    model, images, labels = small_timm_vit(**TIMM[kind]), uint8_images(3, seed=2), torch.tensor([1, 4, 7])
    _check_sum(model, images, labels, 1e-4)
    _check_sum(model.double(), images, labels, 1e-9)


def _brute_force_head_part(model, x, labels, layer, head) -> torch.Tensor:
    """W_c . (gamma * (p - mean p) / sigma) of one head's output p (its slice of the projection, times the layer
    scale), sigma that of the final stream at the token (or pooled vector) the head reads."""
    states = hand_states(model, x)
    block, d = model.blocks[layer], model.blocks[layer].attn.head_dim
    z = hand_attention(block.attn, block.norm1(states[layer]))[..., head * d:(head + 1) * d]  # (B, T, d)
    p = z @ block.attn.proj.weight[:, head * d:(head + 1) * d].T  # (B, T, D)
    p = p * (block.ls1.gamma if hasattr(block.ls1, "gamma") else 1.0)
    final, wc, prefix = states[-1], model.head.weight[labels], model.num_prefix_tokens

    def centred(u, v, norm):  # u: part, v: final stream, both (..., D)
        sigma = (v.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        return norm.weight * (u - u.mean(-1, keepdim=True)) / sigma
    if isinstance(model.norm, nn.LayerNorm):  # per token, then pooled
        q = centred(p, final, model.norm)
        q = q[:, 0] if model.global_pool == "token" else q[:, prefix:].mean(1)
    else:  # pooled, then fc_norm
        q = centred(p[:, prefix:].mean(1), final[:, prefix:].mean(1), model.fc_norm)
    return (q * wc).sum(-1)


@pytest.mark.parametrize("kind", ["zoo-micro", *TIMM])
def test_a_heads_part_is_its_brute_force_output_through_the_final_norm(kind):
    model = (build_model({"zoo": "vit_micro_c10"}) if kind == "zoo-micro" else small_timm_vit(**TIMM[kind])).double()
    images, labels = uint8_images(4, seed=3), torch.tensor([2, 5, 5, 8])
    result = lens.attribution_analysis(model, images, labels)
    x = preprocess(model, images)
    with torch.no_grad():
        for layer, head in [(0, 0), (1, 1), (1, model.blocks[1].attn.num_heads - 1)]:
            want = _brute_force_head_part(model, x, labels, layer, head)
            assert torch.allclose(result.true[:, result.index(layer, head)], want, rtol=0, atol=1e-9)
            assert torch.equal(result.head_true[:, layer, head], result.true[:, result.index(layer, head)])


def test_attribution_margin_is_the_logit_minus_the_mean_of_the_others():
    model = build_model({"zoo": "vit_micro_c10"}).double()
    images, labels = uint8_images(4, seed=4), torch.tensor([0, 1, 2, 3])
    result = lens.attribution_analysis(model, images, labels)
    logits = _model_logits(model, images)
    others = (logits.sum(1) - logits.gather(1, labels[:, None])[:, 0]) / (logits.shape[1] - 1)
    # the constant's margin is the bias and beta margin: the parts carry the rest
    w, b = model.head.weight, model.head.bias
    wm = w[labels] - (w.sum(0) - w[labels]) / (len(w) - 1)
    bm = b[labels] - (b.sum() - b[labels]) / (len(b) - 1)
    const = bm + wm @ model.norm.bias
    assert torch.allclose(result.margin.sum(1) + const.detach(), logits.gather(1, labels[:, None])[:, 0] - others,
                          atol=1e-9, rtol=0)


def test_attribution_without_labels_explains_the_prediction():
    model = build_model({"zoo": "vit_micro_c10"})
    images = uint8_images(3, seed=5)
    result = lens.attribution_analysis(model, images)
    assert torch.equal(result.classes, _model_logits(model, images).argmax(-1))


# --- the logit lens -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["zoo-micro", "avg-fc_norm-layerscale", "token-registers"])
def lens_case(request):
    """A float64 model, 6 images, labels half its own predictions (so accuracy is neither 0 nor 1), its lens."""
    kind = request.param
    model = (build_model({"zoo": "vit_micro_c10"}) if kind == "zoo-micro" else small_timm_vit(**TIMM[kind])).double()
    images = uint8_images(6, seed=6)
    pred = _model_logits(model, images).argmax(-1)
    labels = torch.where(torch.arange(6) % 2 == 0, pred, (pred + 1) % 10)
    return model, images, labels, lens.logit_lens_analysis(model, images, labels)


def test_lens_last_row_is_the_models_own_prediction(lens_case):
    model, images, labels, result = lens_case
    own = result.readings.index(result.pool)
    pred = _model_logits(model, images).argmax(-1)
    assert (result.agree[:, own, -1] == 1).all()
    assert torch.equal(result.correct[:, own, -1], (pred == labels).float())
    assert result.mean("correct")[own, -1] == pytest.approx(float((pred == labels).double().mean()))
    assert result.kl[:, own, -1].abs().max() < 1e-12
    assert result.depth == len(model.blocks)


def test_lens_rows_rank_and_kl_against_a_brute_force_loop(lens_case):
    model, images, labels, result = lens_case
    x = preprocess(model, images)
    with torch.no_grad():
        states = hand_states(model, x)
        final = torch.log_softmax(hand_logits(model, states[-1]), -1)
        for r, how in enumerate(result.readings):
            for row, state in enumerate(states):
                logp = torch.log_softmax(hand_logits(model, state, how), -1)
                for i in range(len(images)):
                    top = int(logp[i].argmax())
                    assert result.correct[i, r, row] == float(top == labels[i])
                    assert result.agree[i, r, row] == float(top == final[i].argmax())
                    assert result.rank[i, r, row] == sum(float(v) > float(logp[i, labels[i]]) for v in logp[i])
                    kl = sum(math.exp(a) * (a - b) for a, b in zip(final[i].tolist(), logp[i].tolist()))
                    assert float(result.kl[i, r, row]) == pytest.approx(kl, abs=1e-5)


def test_lens_reads_the_mean_patch_token_too_on_class_token_models(lens_case):
    model, *_, result = lens_case
    assert result.readings == (["token", "avg"] if model.global_pool == "token" else ["avg"])
    low, high = result.interval("correct")
    assert (low <= result.mean("correct") + 1e-12).all() and (result.mean("correct") <= high + 1e-12).all()


def test_first_layer_is_the_first_row_reaching_the_fraction_of_the_final_accuracy(lens_case):
    *_, result = lens_case
    for reading in result.readings:
        acc = result.correct[:, result.readings.index(reading)].double().mean(0).tolist()  # (depth + 1,)
        for fraction in (0.0, 0.5, 1.0):
            want = next((i for i, a in enumerate(acc) if a >= fraction * acc[-1]), None)
            assert result.first_layer(fraction, reading) == want
