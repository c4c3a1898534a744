"""What a training step is made of: batched augmentation, the learning-rate schedule, weight-decay groups."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import models
from vitlab.training import steps


def test_augment_is_a_padded_crop_then_flip():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = steps.augment(images, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    padded = F.pad(images.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for b in range(len(images)):  # some crop offset (and maybe a flip) must reproduce each output
        candidates = [
            crop.flip(-1) if flip else crop
            for dy in range(5) for dx in range(5) for flip in (False, True)
            for crop in [padded[b, :, dy:dy + 8, dx:dx + 8]]
        ]
        assert any(torch.equal(out[b], c) for c in candidates)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_augment_without_padding_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(steps.augment(images, 0, False, torch.Generator()), images)


def test_lr_schedule_warmup_then_cosine():
    peak, total, warmup = 0.1, 100, 10
    assert steps.lr_at(0, total, warmup, peak) == pytest.approx(peak / warmup)
    assert steps.lr_at(9, total, warmup, peak) == pytest.approx(peak)
    assert steps.lr_at(55, total, warmup, peak) == pytest.approx(0.5 * peak * (1 + math.cos(math.pi * 0.5)))
    assert steps.lr_at(100, total, warmup, peak) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["vit_micro_c10", "resnet_micro_c10"])
def test_weight_decay_applies_to_conv_and_linear_weights_only(name):
    model = models.build_model({"zoo": name})
    decay, rest = steps.param_groups(model, 0.05)
    assert (decay["weight_decay"], rest["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    # Independent of how the exemptions are found: the weights of convolutions and linear layers.
    weights = {f"{m}.weight" for m, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}
    assert {names[id(p)] for p in decay["params"]} == weights
    assert {names[id(p)] for p in rest["params"]} == set(names.values()) - weights
    if name.startswith("vit"):
        exempt = {names[id(p)] for p in rest["params"]}
        assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "norm.weight"} <= exempt


def test_randaugment_draws_each_images_own_ops_from_seed_and_step_alone():
    torch.manual_seed(123)
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(64, -1, -1, -1).contiguous()
    state = torch.get_rng_state()
    out = steps.randaugment(images, ops=2, magnitude=9, seed=0, step=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left where it was
    assert torch.equal(out, steps.randaugment(images, 2, 9, seed=0, step=5))  # a resumed run draws the same
    assert not torch.equal(out, steps.randaugment(images, 2, 9, seed=0, step=6))
    assert not torch.equal(out, steps.randaugment(images, 2, 9, seed=1, step=5))
    assert len({o.numpy().tobytes() for o in out}) > 10  # one image repeated: each copy got its own ops
    assert steps.randaugment(images, 0, 9, seed=0, step=5) is images  # off


def test_randaugment_at_magnitude_zero_leaves_only_the_ops_without_a_strength():
    """At magnitude 0 the 12 ops with a strength are identities (no shear, shift, turn; factor 1; 8 bits; threshold
    255), so one op gives the image, its autocontrast or its equalisation, and each appears."""
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    images = torch.randint(30, 200, (64, 3, 16, 16), dtype=torch.uint8)
    out = steps.randaugment(images, ops=1, magnitude=0, seed=3, step=0)
    kinds = []
    for x, y in zip(images, out):
        matches = [k for k, f in (("same", lambda t: t), ("autocontrast", TF.autocontrast), ("equalize", TF.equalize))
                   if torch.equal(y, f(x))]
        assert matches, "an output that no magnitude-free op makes"
        kinds.append(matches[0])
    assert set(kinds) == {"same", "autocontrast", "equalize"} and kinds.count("same") > 32
