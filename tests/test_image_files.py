"""vitlab.data.images: your own images as the model sees them, each kind checked against an expectation computed
here independently (numpy, torchvision's functional transforms, PIL's own decoding)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vitlab import data
from vitlab.models import build_model

KINDS = data.SAMPLES_DIR / "kinds"
PHOTOS = [data.SAMPLES_DIR / f for f in ("astronaut.jpg", "cat.jpg", "coffee_cup.jpg", "rocket.jpg")]


def _pixels(path) -> np.ndarray:
    """The file's stored pixels as PIL decodes them, with no orientation applied."""
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def micro():
    return build_model({"zoo": "vit_micro_c10"})  # 32x32 input, crop_pct 1.0


def test_square_inputs_give_the_pixels_samples_gave(micro):
    # Committed results were computed on samples(size); the same files through images() must not move a pixel.
    for size in (32, 224):
        shipped, names = data.samples(size)
        mine, _ = data.images(PHOTOS, size=size)
        assert torch.equal(mine, shipped[:4]), size
    with pytest.warns(UserWarning, match="far from the 32 px images"):
        at_model, _ = data.images(PHOTOS, model=micro)
    assert torch.equal(at_model, data.samples(32)[0][:4])


@pytest.mark.parametrize("cfg", [dict(input_size=(3, 64, 64), crop_pct=0.9, interpolation="bicubic"),
                                 dict(input_size=(3, 48, 48), crop_pct=1.0, interpolation="bilinear")],
                         ids=["crop0.9-bicubic", "crop1-bilinear"])
def test_non_square_photo_is_short_side_resized_then_centre_cropped(cfg):
    x, names = data.images(KINDS / "wide_320x240.jpg", model=cfg)
    side = cfg["input_size"][1]
    source = torch.from_numpy(_pixels(KINDS / "wide_320x240.jpg").copy()).permute(2, 0, 1)  # (3, 240, 320)
    mode = InterpolationMode.BICUBIC if cfg["interpolation"] == "bicubic" else InterpolationMode.BILINEAR
    resized = TF.resize(source.float(), [math.floor(side / cfg["crop_pct"])], interpolation=mode, antialias=True)
    expected = TF.center_crop(resized, [side, side]).round().clamp(0, 255).to(torch.uint8)
    assert names == ["wide_320x240.jpg"] and x.shape == (1, 3, side, side) and x.dtype == torch.uint8
    assert (x[0].int() - expected.int()).abs().max() <= 1
    squashed = TF.resize(source.float(), [side, side], interpolation=mode, antialias=True)
    assert (x[0].float() - squashed).abs().mean() > 5  # the aspect ratio was kept, not squashed


def test_timm_model_config_is_read_from_the_model_object(tiny_vit):
    # timm's own eval transform (PIL resize, so a level or two apart) on the model's resolved config.
    import timm

    cfg = timm.data.resolve_model_data_config(tiny_vit)
    transform = timm.data.create_transform(**cfg, is_training=False)
    with Image.open(KINDS / "wide_320x240.jpg") as im:
        normalised = transform(im.convert("RGB"))  # (3, 32, 32)
    expected = (normalised * torch.tensor(cfg["std"])[:, None, None] + torch.tensor(cfg["mean"])[:, None, None]) * 255
    x, _ = data.images([KINDS / "wide_320x240.jpg"], model=tiny_vit)
    assert x.shape == (1, 3, 32, 32) and cfg["crop_pct"] < 1
    assert (x[0].float() - expected).abs().mean() < 3


def test_exif_rotated_jpeg_gives_the_transposed_stored_pixels():
    stored = _pixels(KINDS / "exif_rotated.jpg")  # (96, 72, 3): tag 6 says turn 90 degrees clockwise to display
    x, _ = data.images(KINDS / "exif_rotated.jpg")
    assert x.shape == (1, 3, 72, 96)
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), np.rot90(stored, k=-1))
    upright = torch.from_numpy(_pixels(data.SAMPLES_DIR / "cat.jpg").copy()).permute(2, 0, 1)[None]
    near = data.resize(upright, (72, 96)).float()
    assert (x.float() - near).abs().mean() < 15  # the cat, turned upright (unturned it would not even fit)


def test_grey_gives_three_equal_channels():
    x, _ = data.images(KINDS / "grey.jpg")
    grey = _pixels(KINDS / "grey.jpg")  # (96, 96)
    assert x.shape == (1, 3, 96, 96) and all(torch.equal(x[0, c], torch.from_numpy(grey.copy())) for c in range(3))


def test_rgba_is_composited_on_white():
    rgba = _pixels(KINDS / "rgba.png").astype(np.int64)  # (64, 64, 4)
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    x = data.images(KINDS / "rgba.png")[0][0].permute(1, 2, 0).numpy().astype(np.int64)
    clear, opaque = alpha[..., 0] == 0, alpha[..., 0] == 255
    assert clear.any() and opaque.any() and (~clear & ~opaque).any()
    assert (x[clear] == 255).all() and np.array_equal(x[opaque], rgb[opaque])
    blended = rgb * alpha / 255 + 255 * (1 - alpha / 255)
    assert np.abs(x - blended).max() <= 1


def test_16_bit_png_is_scaled_not_clipped():
    deep = _pixels(KINDS / "grey16.png").astype(np.int64)  # (48, 64), 0..65535
    assert deep.max() > 255 and deep.min() < 65535 - 255
    x, _ = data.images(KINDS / "grey16.png")
    expected = (deep * 255 + 32767) // 65535  # rounded to the nearest 8-bit level
    assert all(np.array_equal(x[0, c].numpy(), expected) for c in range(3))


def test_palette_with_transparency_and_cmyk_read_as_rgb(tmp_path):
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    palette.paste(0, (0, 0, 8, 16))
    palette.save(tmp_path / "p.png", transparency=0)  # colour 0 (black) is transparent: left half white
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red in ink
    x, names = data.images(tmp_path)
    assert names == ["c.jpg", "p.png"]
    assert (x[1, :, :, :8] == 255).all() and x[1, :, :, 8:].reshape(3, -1).unique(dim=1).flatten().tolist() == [
        200, 30, 10]
    assert (x[0, 0].float().mean() > 240) and (x[0, 1:].float().mean() < 15)


def test_folder_list_and_upload_give_the_same_images():
    folder, names = data.images(KINDS, size=40)
    assert names == sorted(p.name for p in KINDS.iterdir()) and folder.shape == (len(names), 3, 40, 40)
    listed, _ = data.images([KINDS / n for n in names], size=40)
    uploaded, up_names = data.images({n: (KINDS / n).read_bytes() for n in names}, size=40)
    assert torch.equal(folder, listed) and torch.equal(folder, uploaded) and up_names == names


def test_warns_only_when_images_are_far_from_the_model_size(micro, recwarn):
    cifar = sorted(data.SAMPLES_DIR.glob("cifar10_*.jpg"))[:3]  # 32x32: what the model takes
    data.images(cifar, model=micro)
    data.images(KINDS / "grey16.png", model=micro)  # 48 px: 1.5x
    assert not [w for w in recwarn if "far from" in str(w.message)]
    with pytest.warns(UserWarning, match=r"1 of 4 images \(e.g. cat.jpg\) have a short side of 224 px.*shrunk"):
        data.images(cifar + [data.SAMPLES_DIR / "cat.jpg"], model=micro)
    cfg = dict(input_size=(3, 224, 224), crop_pct=0.9)
    with pytest.warns(UserWarning, match="enlarged about 7x"):
        data.images(cifar[:1], model=cfg)


def test_a_10000_pixel_wide_image_is_read_with_bounded_memory(tmp_path):
    """A 10,000x2,000 JPEG and PNG (60 MB of RGB, 240 MB as floats) at 224 px: the reading process's peak memory
    (ru_maxrss, in a child after importing vitlab) grows by far less than decoding it whole would take."""
    wide = Image.linear_gradient("L").resize((10_000, 2_000)).convert("RGB")
    wide.save(tmp_path / "wide.jpg", quality=90)
    wide.save(tmp_path / "wide.png", compress_level=1)
    del wide
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import json, resource, time, vitlab.data
        vitlab.data.images(vitlab.data.SAMPLES_DIR / "kinds", size=224)  # what the first call loads is not counted
        out = {{}}
        for name in ("wide.jpg", "wide.png"):
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            start = time.perf_counter()
            x, _ = vitlab.data.images({str(tmp_path)!r} + "/" + name, size=224)
            out[name] = dict(shape=list(x.shape), seconds=time.perf_counter() - start,
                             grew_mb=(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        print(json.dumps(out))
        """)], capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["wide.jpg"]["shape"] == out["wide.png"]["shape"] == [1, 3, 224, 224]
    assert out["wide.jpg"]["grew_mb"] < 25, out  # JPEG: decoded at 1/8 scale, never whole
    assert out["wide.png"]["grew_mb"] < 150, out  # PNG: decoded whole once (60 MB), shrunk before any float copy
    assert max(out["wide.jpg"]["seconds"], out["wide.png"]["seconds"]) < 10, out
