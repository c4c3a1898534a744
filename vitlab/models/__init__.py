"""Models: the CIFAR architectures, weight files, loading any spec (zoo name, timm name, file) and input checks.

The loading API is exported here: ``vitlab.models.load_model``, ``build_model``, ``save_model``, ``preprocess``.
"""
from .architectures import ARCHITECTURES
from .loading import (ZOO_DIR, WeightsUnavailableError, build_model, check_spec, describe_load, load_model,
                      preprocess, pretrained_tags, save_model, set_input_size, weights_file, zoo_weights)

__all__ = ["ARCHITECTURES", "WeightsUnavailableError", "ZOO_DIR", "build_model", "check_spec", "describe_load",
           "load_model", "preprocess", "pretrained_tags", "save_model", "set_input_size", "weights_file", "zoo_weights"]
