"""The wheel: built from what git tracks, installed with ``--no-deps`` into a fresh venv that sees ``.venv``'s packages
through a ``.pth`` file (a fresh resolve would download the CUDA build of torch), and run from outside the checkout."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import vitlab
from vitlab import settings
from test_data import make_imagefolder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: What the installed vitlab runs, from a folder outside the checkout: an analysis on its own sample images, a
#: CIFAR-10 decode (into its cache) and a publish (refused: its zoo is package data). Prints what it saw as JSON.
_SCRIPT = """
import json, sys, torch, vitlab
from vitlab.__main__ import main
model = vitlab.load_model("vit_tiny_c10_e40")
images, _ = vitlab.data.samples(32)
distance = vitlab.analysis.distance.distance_analysis(model, images)
positions = vitlab.analysis.positions.position_analysis(model)
torch.save({"per_image": distance.per_image, "sim": positions.sim}, "result.pt")
test_images, _ = vitlab.data.cifar10("test", download=False)
try:
    main(["publish", "my-run", "vit_tiny_c10"])
except SystemExit as refused:
    refusal = str(refused.code)
print(json.dumps({"file": vitlab.__file__, "images": len(images), "decoded": len(test_images), "refusal": refusal,
                  "ui": sorted({m.split(".")[0] for m in sys.modules} & {"ipywidgets", "anywidget", "plotly"})}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path  # the venv's interpreter
    home: Path  # HOME of the runs below
    status: tuple[str, str]  # the checkout's ``git status --porcelain`` and build leftovers, before and after


def _git_status() -> str:
    """What git sees changed, and the build leftovers it ignores (other ignored files change under parallel tests)."""
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    return changed + "".join(f"{p.name}\n" for p in (ROOT / "build", *ROOT.glob("*.egg-info")) if p.exists())


def _source_files(*folders: str) -> list[str]:
    """The files git tracks or would (untracked ones not ignored) under ``folders`` (all by default)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", *folders],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (ROOT / name).is_file()]  # a deleted file is listed till committed


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Build the wheel from a copy of the files git tracks (pip builds in the source folder: build/, egg-info), and
    install it into a venv whose ``.pth`` file adds this interpreter's site-packages."""
    tmp, before = tmp_path_factory.mktemp("wheel"), _git_status()
    for name in _source_files():
        (tmp / "source" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp / "source" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", str(tmp / "source"), "-w",
                            str(tmp / "dist")], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=60)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # torch, timm, ... of this venv
    Path(purelib, "base_venv.pth").write_text("".join(f"{p}\n" for p in ours))
    wheel = next((tmp / "dist").glob("vitlab-*.whl"))
    done = subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (tmp / "home").mkdir()
    return Installed(wheel, python, tmp / "home", (before, _git_status()))


def _run(installed: Installed, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the venv's python in ``cwd`` with no trace of the checkout: no PYTHONPATH, HOME redirected."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "VITLAB_CACHE", "VITLAB_DATA", "XDG_CACHE_HOME")}
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([installed.python, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**clean, "HOME": str(installed.home), **env})


def test_the_wheel_holds_the_package_and_what_it_ships_and_leaves_the_checkout_alone(installed):
    before, after = installed.status
    assert after == before, "building the wheel left files in the checkout"
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vitlab").rglob("*.py")}
    assert len({m.split("/")[1] for m in modules if m.count("/") > 1}) >= 4  # the subpackages themselves
    shipped_files = {n for n in names if n.startswith("vitlab/_data/")}
    assert {n for n in names - shipped_files if n.endswith(".py")} == modules
    tracked = _source_files(*settings.SHIPPED.values())
    assert any(t.endswith(".safetensors") for t in tracked) and any(t.endswith(".ipynb") for t in tracked)
    shipped = {f"vitlab/_data/{name}/{Path(t).relative_to(folder).as_posix()}"
               for name, folder in settings.SHIPPED.items() for t in tracked if t.startswith(f"{folder}/")}
    assert shipped_files == shipped
    # every shipped file, and besides the modules and the metadata nothing else (no .cache, lab/, runs/, tests)
    assert all(n.endswith(".py") or n.startswith("vitlab-0") for n in names - shipped_files)


def test_the_installed_package_runs_an_analysis_outside_the_checkout(installed, tmp_path):
    expected_data = make_imagefolder(tmp_path / "cifar", per_class=(1, 1))
    ran = _run(installed, tmp_path / "elsewhere", "-c", _SCRIPT, VITLAB_DATA=str(tmp_path / "cifar"))
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(installed.python.parent.parent)  # the venv's vitlab, not the checkout's
    assert seen["ui"] == [], "import vitlab and the command line must not load the notebook widgets"
    assert "package data of an installed vitlab" in seen["refusal"] and "\n" not in seen["refusal"]
    assert seen["decoded"] == len(expected_data["test"][1])
    cached = list((installed.home / ".cache" / "vitlab").glob("cifar10-test-*.npz"))
    assert len(cached) == 1, "the installed vitlab caches under ~/.cache/vitlab"
    model = vitlab.load_model("vit_tiny_c10_e40")  # the checkout's vitlab, on the checkout's samples
    images, _ = vitlab.data.samples(32)
    assert seen["images"] == len(images)
    theirs = torch.load(tmp_path / "elsewhere" / "result.pt")
    ours = vitlab.analysis.distance.distance_analysis(model, images).per_image
    np.testing.assert_allclose(theirs["per_image"], ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(theirs["sim"], vitlab.analysis.positions.position_analysis(model).sim, atol=1e-6)


def test_the_installed_command_line_gives_its_version_and_copies_the_notebooks(installed, tmp_path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    shown = _run(installed, tmp_path, "-m", "vitlab", "--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"vitlab {version}", shown.stderr
    copied = _run(installed, tmp_path, "-m", "vitlab", "notebooks", "mine/notebooks")
    assert copied.returncode == 0, copied.stderr
    committed = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in (tmp_path / "mine" / "notebooks").iterdir()) == [p.name for p in committed]
    assert all((tmp_path / "mine" / "notebooks" / p.name).read_bytes() == p.read_bytes() for p in committed)
