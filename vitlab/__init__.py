"""vitlab: look inside Vision Transformers (Dosovitskiy et al., 2021) from a notebook.

The package follows the data: ``models`` (load or build) -> ``analysis`` (capture, the paper's
analyses) -> ``training`` (loop, run folders, studies) -> ``views`` (readouts, figures, explorers),
over the base modules ``settings``, ``io``, ``data`` and ``records``. ``views`` (plotly, ipywidgets)
is imported on first use only, so the command line and torchrun workers never load the notebook stack.
"""
import importlib

from . import analysis, data, models, records, result_files, settings, training
from .analysis.capture import Capture, capture
from .analysis.distance import head_statistics
from .models import load_model, preprocess, save_model
from .settings import quick_mode
from .training.zoo import available

__all__ = ["Capture", "analysis", "available", "capture", "data", "head_statistics", "load_model", "models",
           "preprocess", "quick_mode", "records", "result_files", "save_model", "settings", "training", "views"]


def __getattr__(name: str):
    if name == "views":
        return importlib.import_module(".views", __name__)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
