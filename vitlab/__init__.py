"""vitlab: look inside Vision Transformers (Dosovitskiy et al., 2021) from a notebook."""
from . import data, metrics, plots, widgets
from .models import available, load_model, preprocess, save_model, zoo
from .settings import quick_mode

__all__ = ["available", "data", "load_model", "metrics", "plots", "preprocess", "quick_mode", "save_model", "widgets", "zoo"]
