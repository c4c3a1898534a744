"""Write data/samples/kinds/: the kinds of image file the photographs lack, each derived from cat.jpg and a few KB.

Run from the repository root: ``python data/samples/make_kinds.py`` (deterministic; rewrites the five files).
"""
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
KINDS = HERE / "kinds"
ORIENTATION = 0x0112  # the EXIF tag; 6 means "rotate 90 degrees clockwise to display"


def main() -> None:
    KINDS.mkdir(exist_ok=True)
    cat = Image.open(HERE / "cat.jpg").convert("RGB")  # 224x224
    cat.convert("L").resize((96, 96), Image.LANCZOS).save(KINDS / "grey.jpg", quality=85)
    wide = cat.resize((320, 320), Image.LANCZOS).crop((0, 40, 320, 280))  # 320x240, aspect 4:3
    wide.save(KINDS / "wide_320x240.jpg", quality=75)
    upright = cat.resize((96, 72), Image.LANCZOS)  # 96 wide, 72 high as displayed
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(KINDS / "exif_rotated.jpg", quality=85, exif=exif)  # 72x96 stored
    small = np.asarray(cat.resize((64, 64), Image.LANCZOS))
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 31.5, xx - 31.5)
    alpha = np.clip((30 - radius) / 10, 0, 1) * 255  # opaque disc, soft edge, transparent corners
    Image.fromarray(np.dstack([small, alpha.round().astype(np.uint8)]), "RGBA").save(KINDS / "rgba.png")
    grey = np.asarray(cat.convert("L").resize((64, 48), Image.LANCZOS), dtype=np.uint16)
    deep = grey * 256 + (xx[:48] * 37 + yy[:48] * 11) % 256  # all 16 bits used: 8-bit clipping would show white
    Image.fromarray(deep.astype(np.uint16)).save(KINDS / "grey16.png")


if __name__ == "__main__":
    main()
