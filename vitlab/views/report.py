"""One self-contained HTML page of a model's Fig. 6/7 panels and their readouts (:func:`report`): the page to attach
to a paper or an issue. Each analysis runs once; its figure and readout both take its result."""
from __future__ import annotations

import datetime
import importlib.metadata
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .. import data
from ..analysis.distance import distance_analysis
from ..analysis.filters import components, filters_analysis
from ..analysis.metrics import is_hybrid
from ..analysis.positions import position_analysis
from ..analysis.representations import model_family
from ..analysis.rollout import rollout_analysis
from ..settings import quick_or
from . import figures, readouts
from .controls import RandomWeights, Spec, as_spec, cached_model, load_note, spec_label
from .export import Section, save_page
from .image_sources import ImageSource

#: Rollout maps drawn (the Fig. 6 readout covers every image); principal components shown (the paper's 28).
MAPS, COMPONENTS = 6, 28


def _images(images: Any) -> tuple[ImageSource, ImageSource]:
    """(images for Fig. 6, images for Fig. 7 right): the given ones for both, else the shipped samples and, for the
    distances, the first 128 analysis images (16 in quick mode) as notebook 03 takes them."""
    if images is not None:
        source = ImageSource(images)  # every file's header read: a bad file fails here, before any work
        return source, source
    shipped, names = data.samples()
    analysis, _, where = data.analysis_images()
    n = min(len(analysis), quick_or(128, 16))
    return (ImageSource(shipped, names, f"the {len(names)} shipped sample images"),
            ImageSource(analysis[:n], described=data.describe_images(n, where)))


def _said(result: Any, more: str = "") -> list[str]:
    """The readout of ``result`` as the page's paragraphs: what this model shows, then the paper's claim."""
    said = readouts.readout(result)
    return [f"Measured ({said.figure}): {said.text}{more}", f"Paper: {said.paper}"]


def _note(heading: str, text: str) -> Section:
    return Section(heading, text=[text])


def _filters(net: nn.Module, name: str) -> Section:
    heading = "Fig. 7 (left): patch-embedding filters"
    if is_hybrid(net):
        return _note(heading, "A hybrid has no patch-embedding filters: its tokens come from a CNN's feature map.")
    result = filters_analysis(net, min(COMPONENTS, components(net)))
    return Section(heading, [figures.embedding_filters_figure(result, title=f"{name}: first {result.k} principal "
                                                                              "components"),
                             figures.explained_variance_figure(result)], _said(result))


def _positions(net: nn.Module, name: str) -> Section:
    result = position_analysis(net)
    return Section("Fig. 7 (center): position-embedding similarity",
                   [figures.position_similarity_figure(result, title=f"{name}: position embedding similarity")],
                   _said(result))


def _distance(net: nn.Module, name: str, images: ImageSource) -> Section:
    batch = images.for_model(net, resized=False)  # a batch keeps its size: the analysis resizes it batch by batch
    result = distance_analysis(net, batch, reference_images=min(len(batch), quick_or(256, 16)))
    title = f"{name}: mean attention distance, {images.described}; uniform {result.uniform:.1f} px"
    return Section("Fig. 7 (right): mean attention distance",
                   [figures.attention_distance_figure(result, title, name=name)], _said(result))


def _rollout(net: nn.Module, images: ImageSource) -> Section:
    batch = images.for_model(net)  # (N, 3, H, W) at the model's input size
    result = rollout_analysis(net, batch, described=images.described)
    shown = [figures.attention_overlay_figure(batch[i], result.maps[i], title=f"attention rollout: {images.names[i]}",
                                              scale="rollout") for i in range(min(MAPS, len(batch)))]
    more = f" The first {len(shown)} of {len(batch)} images are drawn." if len(batch) > len(shown) else ""
    return Section("Fig. 6: attention rollout", shown, _said(result, more))


def _header(spec: Spec, net: nn.Module, maps: ImageSource, distances: ImageSource) -> list[str]:
    try:
        version = importlib.metadata.version("vitlab")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    lines = [f"Model: {spec_label(spec)} ({model_family(net)}, {sum(p.numel() for p in net.parameters()):,} "
             "parameters).",
             f"Images: {maps.described} (Fig. 6)" + (f"; {distances.described} (Fig. 7 right)." if distances is not maps
                                                      else ", for Fig. 6 and Fig. 7 (right)."),
             f"Written by vitlab {version} on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. Grey bands and "
             "dashed lines are references: random-initialised models of the same architecture, uniform attention."]
    if isinstance(spec, RandomWeights) or "random weights" in load_note(spec):
        lines.insert(0, "RANDOM WEIGHTS: this model has random weights, not trained ones: "
                        "its panels show an untrained model. " + load_note(spec))
    elif load_note(spec):
        lines.insert(0, f"Note: {load_note(spec)}")
    return lines


def report(model: Spec | nn.Module, images: Any = None, path: str | Path = "vitlab-report.html",
           overwrite: bool = False) -> Path:
    """Write one self-contained HTML page (opens offline) with the Fig. 6/7 panels of ``model`` and their readouts:
    patch-embedding filters, position-embedding similarity, mean attention distance, attention rollout.

    Args:
        model: a zoo name, a timm name, a weights file, or a ViT, hybrid or ResNet from code.
        images: a folder, an image file or a list of files (as :func:`vitlab.data.images` takes), or a uint8 batch
            (N, 3, H, W); None: the shipped sample images (Fig. 6) and the analysis images (Fig. 7 right).
        path: the ``.html`` file to write; an existing one is refused unless ``overwrite``.

    Panels a model has none of (a hybrid's filters, all of a ResNet's attention panels) are a one-line note.
    Returns the path written."""
    path = Path(path)
    if path.suffix.lower() != ".html":
        raise ValueError(f"{path}: a report is one HTML page; end the name in .html")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it, or choose another path")
    if isinstance(model, Path):
        model = str(model)
    if not isinstance(model, (str, nn.Module, RandomWeights)):
        raise TypeError(f"model takes a zoo name, timm name or weights file, or a torch model; got "
                        f"{type(model).__name__}")
    spec = as_spec(model)  # a module that is no ViT, hybrid or ResNet: ValueError in one line
    maps, distances = _images(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a random-weights warning is kept by load_note for the page
        net = cached_model(spec)
    name = spec_label(spec)
    if model_family(net) == "resnet":
        said = "A ResNet has no tokens or attention: "
        sections = [_note("Fig. 7 (left): patch-embedding filters", said + "no patch-embedding filters."),
                    _note("Fig. 7 (center): position-embedding similarity", said + "no position embeddings."),
                    _note("Fig. 7 (right): mean attention distance", said + "no attention distance."),
                    _note("Fig. 6: attention rollout", said + "no attention rollout.")]
    else:
        sections = [_filters(net, name), _positions(net, name), _distance(net, name, distances),
                    _rollout(net, maps)]
    title = f"vitlab report: {name}"
    return save_page(sections, path, title, _header(spec, net, maps, distances), overwrite)
