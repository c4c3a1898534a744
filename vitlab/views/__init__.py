"""Views: readouts (measured text), figures (plotly) and explorers (ipywidgets), each module loaded on first use."""
import importlib

_MODULES = ("attribution_explorers", "attribution_figures", "attribution_readouts", "controls", "explorers", "export",
            "figures", "intervention_explorers", "intervention_figures", "intervention_readouts", "readouts",
            "recipe_readouts", "report", "study_explorers", "study_figures", "study_readouts", "style")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitlab.views' has no attribute {name!r}")
