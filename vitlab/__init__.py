"""vitlab: look inside Vision Transformers (Dosovitskiy et al., 2021) from a notebook."""
from . import compare, data, metrics, plots, settings, sweep, train, widgets
from .capture import Capture, capture, head_statistics
from .models import available, load_model, preprocess, save_model, zoo
from .settings import quick_mode

__all__ = [
    "Capture", "available", "capture", "compare", "data", "head_statistics", "load_model", "metrics", "plots",
    "preprocess", "quick_mode", "save_model", "settings", "sweep", "train", "widgets", "zoo",
]
