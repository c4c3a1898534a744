"""The wheel's one build step beyond pyproject.toml: copy what the checkout keeps at its top level (the zoo, the
sample images, the committed results, the notebooks) into ``vitlab/_data`` of the build folder, where an installed
vitlab reads it (``vitlab.settings.shipped_dir``). The checkout keeps its layout, and an editable install
(``pip install -e .``) reads the checkout's own folders, so nothing is copied for one."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: vitlab.settings.SHIPPED (that module imports torch, which a build need not have): name -> folder in the checkout.
SHIPPED = {"zoo": "data/zoo", "samples": "data/samples", "results": "data/results", "notebooks": "notebooks"}
#: Never shipped: a publish's lock and temporary files, caches, JupyterLab's checkpoints.
_SKIP = shutil.ignore_patterns("*.lock", ".*.tmp", "__pycache__", "*.pyc", ".ipynb_checkpoints")


class BuildPyWithData(build_py):
    """``build_py`` that also copies the shipped folders into ``<build_lib>/vitlab/_data``."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for name, folder in SHIPPED.items():
            source, target = ROOT / folder, Path(self.build_lib) / "vitlab" / "_data" / name
            if not source.is_dir():
                raise SystemExit(f"setup.py: {source} is missing; build the wheel from a whole checkout of vitlab")
            shutil.rmtree(target, ignore_errors=True)  # a file deleted since the last build must not linger
            shutil.copytree(source, target, ignore=_SKIP)


setup(cmdclass={"build_py": BuildPyWithData})
