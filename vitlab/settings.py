"""Where vitlab reads its environment's settings, and nowhere else: quick mode, data and cache folders, the device.

Run from its checkout (``pyproject.toml`` naming vitlab beside the package), vitlab reads the zoo, the sample images,
the committed results and the notebooks from the checkout's folders and caches in ``<checkout>/.cache``. Installed
from a wheel, it reads them from its package data (``vitlab/_data``, copied in by ``setup.py``'s build step) and caches
in ``$VITLAB_CACHE``, ``$XDG_CACHE_HOME/vitlab`` or ``~/.cache/vitlab``.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import shutil
import sys
import tomllib
from pathlib import Path

import torch

#: The package folder, and the project checkout it sits in when run from one (see :func:`in_checkout`).
PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
#: Where an installed package holds what a checkout keeps at its top level (the wheel's package data).
PACKAGE_DATA = PACKAGE_DIR / "_data"
#: The folders vitlab ships, by name: their place in a checkout (under ``PACKAGE_DATA/<name>`` when installed).
SHIPPED = {"zoo": "data/zoo", "samples": "data/samples", "results": "data/results", "notebooks": "notebooks"}


@functools.cache
def _checkout_project(root: Path) -> dict:
    """The ``[project]`` table of ``root/pyproject.toml``; empty when there is none or it does not parse."""
    try:
        return tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def in_checkout() -> bool:
    """True when vitlab runs from its project checkout (``pyproject.toml`` naming vitlab beside the package), False
    when it runs installed (from a wheel): then the shipped folders are package data and the cache is the user's."""
    return _checkout_project(PROJECT_ROOT).get("name") == "vitlab"


def shipped_dir(name: str) -> Path:
    """The folder of what vitlab ships: ``"zoo"``, ``"samples"``, ``"results"`` or ``"notebooks"``, from the checkout
    (``data/zoo``, ..., ``notebooks``) or, installed, from the package data."""
    if name not in SHIPPED:
        raise ValueError(f"vitlab ships no folder {name!r}; one of {sorted(SHIPPED)}")
    return PROJECT_ROOT / SHIPPED[name] if in_checkout() else PACKAGE_DATA / name


def refuse_package_data(path: str | os.PathLike, action: str, instead: str = "pass an out folder of your own") -> None:
    """Raise PermissionError (one line) when ``path`` lies in an installed vitlab's package data, which ``action``
    (e.g. ``"publish"``) must not write into: those files belong to the installation. ``instead``: what to do."""
    where = Path(path).resolve()
    if not in_checkout() and (where == PACKAGE_DATA or PACKAGE_DATA in where.parents):
        raise PermissionError(f"{action} would write into {where}, the package data of an installed vitlab; "
                              f"{instead}, or work from a checkout of the project (git clone)")


def version() -> str:
    """vitlab's version: the checkout's ``pyproject.toml`` when run from one (an editable install's metadata may be
    older), else the installed distribution's metadata."""
    if in_checkout():
        return _checkout_project(PROJECT_ROOT)["version"]
    return importlib.metadata.version("vitlab")


#: The committed notebooks, and the git-ignored folder of working copies that ``make lab`` serves (``lab`` in the
#: current folder when installed).
NOTEBOOKS_DIR = shipped_dir("notebooks")
LAB_DIR = PROJECT_ROOT / "lab" if in_checkout() else Path("lab")


def quick_mode() -> bool:
    """True when ``VITLAB_QUICK`` is 1/true/yes/on: notebooks shrink data and steps to run in a minute or two."""
    return os.environ.get("VITLAB_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def quick_or(full, quick):
    """``quick`` in quick mode, else ``full``: how notebooks size their work."""
    return quick if quick_mode() else full


def static_mode() -> bool:
    """True where explorers should draw plain figures instead of plotly's ``FigureWidget``: ``VITLAB_STATIC`` is
    1/true/yes/on, or (unless it is 0/false/no/off) the kernel runs in Colab (``google.colab`` imported) or VS Code
    (``VSCODE_PID`` set), hosts where the widget is reported not to render and the kernel cannot see that it did not."""
    env = os.environ.get("VITLAB_STATIC", "").strip().lower()
    if env in {"1", "true", "yes", "on"}:
        return True
    if env in {"0", "false", "no", "off"}:
        return False
    return "google.colab" in sys.modules or "VSCODE_PID" in os.environ


def data_root() -> Path:
    """The folder searched for datasets (and where CIFAR-10 is downloaded): ``VITLAB_DATA`` if set, else
    ``<checkout>/data``, or ``<cache_dir()>/data`` when installed."""
    env = os.environ.get("VITLAB_DATA")
    if env:
        return Path(env).expanduser()
    return PROJECT_ROOT / "data" if in_checkout() else cache_dir() / "data"


def cache_dir() -> Path:
    """Folder for derived files (decoded datasets): ``VITLAB_CACHE``, else ``<checkout>/.cache`` (data may be
    read-only), or when installed ``$XDG_CACHE_HOME/vitlab`` (an absolute one, as the XDG spec says) or
    ``~/.cache/vitlab``."""
    env = os.environ.get("VITLAB_CACHE")
    if env:
        return Path(env).expanduser()
    if in_checkout():
        return PROJECT_ROOT / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "vitlab"


def runs_dir() -> Path:
    """The folder of the notebooks' training runs: ``<checkout>/runs`` (git-ignored), or ``runs`` in the current
    folder when installed."""
    return PROJECT_ROOT / "runs" if in_checkout() else Path("runs")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


#: Where a system Chromium lives when it is not on the PATH (Debian's package).
SYSTEM_CHROMES = ("/usr/bin/chromium",)


def browser_path() -> Path | None:
    """The Chrome that image export (kaleido) drives: ``BROWSER_PATH`` when set (kaleido's own variable; None when
    it names no executable file), else ``chromium`` on the PATH or /usr/bin/chromium; None without any."""
    env = os.environ.get("BROWSER_PATH")
    if env is not None:
        path = Path(env).expanduser()
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    found = found or next((p for p in SYSTEM_CHROMES if os.access(p, os.X_OK)), None)
    return Path(found) if found else None


def _cell_sources(path: Path) -> list[tuple[str, str]]:
    """A notebook's cells as (type, source): what a person wrote, without outputs or counts."""
    cells = json.loads(path.read_text())["cells"]
    return [(c["cell_type"], "".join(c["source"])) for c in cells]


def copy_notebooks(source: Path = NOTEBOOKS_DIR, dest: Path = LAB_DIR, replace: bool = False,
                   exist_ok: bool = True) -> list[str]:
    """Copy the committed notebooks into the working folder JupyterLab serves (autosave then writes outputs there,
    never into the committed files). A copy already there is kept, edited or not, unless ``replace``; with
    ``exist_ok=False`` one there is refused (FileExistsError naming it) before anything is copied.

    Returns the names of kept copies whose cells differ from the committed notebook's (outputs not counted).
    """
    notebooks = sorted(source.glob("*.ipynb"))
    there = [n.name for n in notebooks if (dest / n.name).exists()]
    if there and not (exist_ok or replace):
        raise FileExistsError(f"{dest} holds {', '.join(there)} already; copy into a new folder, or move "
                              f"{'it' if len(there) == 1 else 'them'} away first")
    dest.mkdir(parents=True, exist_ok=True)
    differ = []
    for notebook in notebooks:
        copy = dest / notebook.name
        if copy.exists() and not replace:
            if _cell_sources(copy) != _cell_sources(notebook):
                differ.append(notebook.name)
            continue
        shutil.copyfile(notebook, copy)
    return differ
