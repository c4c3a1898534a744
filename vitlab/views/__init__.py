"""Views: readouts (measured text), figures (plotly) and explorers (ipywidgets) over analysis and training results.

The only layer that imports plotly and ipywidgets; its modules load on first use (``vitlab.views.figures``), so
importing ``vitlab.views.readouts`` or ``study_readouts`` alone never loads the notebook stack.
"""
import importlib

_MODULES = ("controls", "explorers", "figures", "readouts", "study_explorers", "study_figures", "study_readouts", "style")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitlab.views' has no attribute {name!r}")
