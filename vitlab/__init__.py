"""vitlab: look inside Vision Transformers (Dosovitskiy et al., 2021) from a notebook.

``plots`` (plotly) and ``widgets`` (ipywidgets) are imported on first use only, so the
command line and torchrun workers never load the notebook stack.
"""
import importlib

from . import (compare, data, features, hooks, inside, metrics, models, mpp, readouts, recipes, records, settings,
               sweep, train, zoo)
from .hooks import Capture, capture, head_statistics
from .models import load_model, preprocess, save_model
from .settings import quick_mode
from .zoo import available

__all__ = [
    "Capture", "available", "capture", "compare", "data", "features", "head_statistics", "hooks", "inside", "load_model",
    "metrics", "models", "mpp", "plots", "preprocess", "quick_mode", "readouts", "recipes", "records", "save_model", "settings", "sweep", "train",
    "widgets", "zoo",
]


_LAZY = ("plots", "widgets")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
