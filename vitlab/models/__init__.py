"""Models: the CIFAR architectures, weight files and sidecars, timm's hub, loading any spec (zoo name, timm name,
file) and the inputs a model takes; the loading API is exported here."""
from .architectures import ARCHITECTURES
from .hub import WeightsUnavailableError, pretrained_tags
from .inputs import preprocess
from .loading import (ZOO_DIR, build_model, check_spec, describe_load, load_model, save_model, set_input_size,
                      weights_file, zoo_weights)

__all__ = ["ARCHITECTURES", "WeightsUnavailableError", "ZOO_DIR", "build_model", "check_spec", "describe_load",
           "load_model", "preprocess", "pretrained_tags", "save_model", "set_input_size", "weights_file", "zoo_weights"]
