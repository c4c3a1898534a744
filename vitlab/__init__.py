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
           "preprocess", "quick_mode", "records", "report", "result_files", "save_model", "settings", "training",
           "views"]


def report(model, images=None, path="vitlab-report.html", overwrite=False):
    """One self-contained HTML page of ``model``'s Fig. 6/7 panels and readouts: :func:`vitlab.views.report.report`
    (plotly and the views load on this first call, not on ``import vitlab``)."""
    return importlib.import_module(".views.report", __name__).report(model, images, path, overwrite)


def __getattr__(name: str):
    if name == "views":
        return importlib.import_module(".views", __name__)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
