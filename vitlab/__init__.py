"""vitlab: look inside Vision Transformers (Dosovitskiy et al., 2021) from a notebook. Folders follow the data:
``models`` -> ``analysis`` -> ``training`` -> ``views`` (plotly, ipywidgets: imported on first use only), over the base
modules ``settings``, ``io``, ``data`` and ``records``."""
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
