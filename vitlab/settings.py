"""Where vitlab reads its environment's settings, and nowhere else: quick mode, data and cache folders, the device."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

#: The project checkout (parent of the package folder).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The committed notebooks, and the git-ignored folder of working copies that ``make lab`` serves.
NOTEBOOKS_DIR, LAB_DIR = PROJECT_ROOT / "notebooks", PROJECT_ROOT / "lab"


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
    """The folder searched for datasets: ``VITLAB_DATA`` if set, else ``<project>/data``."""
    env = os.environ.get("VITLAB_DATA")
    return Path(env).expanduser() if env else PROJECT_ROOT / "data"


def cache_dir() -> Path:
    """Folder for derived files (decoded datasets): ``VITLAB_CACHE`` or ``<project>/.cache`` (data may be read-only)."""
    env = os.environ.get("VITLAB_CACHE")
    return Path(env).expanduser() if env else PROJECT_ROOT / ".cache"


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


def copy_notebooks(source: Path = NOTEBOOKS_DIR, dest: Path = LAB_DIR, replace: bool = False) -> list[str]:
    """Copy the committed notebooks into the working folder JupyterLab serves (autosave then writes outputs there,
    never into the committed files). A copy already there is kept, edited or not, unless ``replace``.

    Returns the names of kept copies whose cells differ from the committed notebook's (outputs not counted).
    """
    dest.mkdir(parents=True, exist_ok=True)
    differ = []
    for notebook in sorted(source.glob("*.ipynb")):
        copy = dest / notebook.name
        if copy.exists() and not replace:
            if _cell_sources(copy) != _cell_sources(notebook):
                differ.append(notebook.name)
            continue
        shutil.copyfile(notebook, copy)
    return differ
