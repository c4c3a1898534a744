import pytest
import torch

from vitlab import models
from vitlab.views import controls
from vitlab.training import zoo


def test_model_dropdown_labels_untrained_zoo_models():
    untrained = [n for n in zoo.available(family="vit") if not zoo.trained(n)]
    if not untrained:
        pytest.skip("every zoo ViT has a checkpoint")
    dropdown = controls.model_dropdown(zoo.available(family="vit"))
    labels = [label for label, _ in dropdown.options]
    assert labels[-len(untrained):] == [f"{n} (untrained)" for n in untrained]  # last, and said so
    assert dropdown.style.description_width == "initial"


def test_model_cache_follows_the_weights_file(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.manual_seed(0)
    models.save_model(models.build_model({"zoo": "vit_micro_c10"}), path)
    first = controls.cached_model(str(path))
    assert controls.cached_model(str(path)) is first  # unchanged file: the same model
    torch.manual_seed(1)
    other = models.build_model({"zoo": "vit_micro_c10"})
    models.save_model(other, path)  # retrained at the same path
    second = controls.cached_model(str(path))
    assert second is not first
    torch.testing.assert_close(second.pos_embed, other.pos_embed)


def test_recent_makes_each_value_once_and_drops_the_least_recently_used():
    from vitlab.views.controls import Recent

    made = []
    cache = Recent(size=2)
    make = lambda k: (lambda: made.append(k) or k * 10)  # noqa: E731
    assert cache.keep("a", make("a")) == "a" * 10 and cache.keep("b", make("b")) == "b" * 10
    assert cache.keep("a", make("a")) == "a" * 10 and made == ["a", "b"]  # kept: not made again
    cache.keep("c", make("c"))  # over size: "b", the least recently used, goes
    assert list(cache) == ["a", "c"]
    cache.keep("b", make("b"))
    assert made == ["a", "b", "c", "b"] and list(cache) == ["c", "b"]
