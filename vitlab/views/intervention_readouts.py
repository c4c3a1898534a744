"""Readouts of the intervention results: what the logit lens, direct logit attribution, head ablation, activation
patching and the distance link show for this model, every number with its 95% bootstrap interval over images, beside
what the literature found. Importing this module registers them with :func:`vitlab.views.readouts.readout`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..analysis.ablation import AblationResult, LinkResult
from ..analysis.lens import READINGS, AttributionResult, LensResult
from ..analysis.patching import PatchingResult
from ..analysis.references import bootstrap_interval
from .readouts import Readout, readout

PAPER_LENS = ("Vilas et al. (NeurIPS 2023) read ViTs' class tokens through the final norm and head: the class "
              "becomes decodable only in the late layers. The paper itself (Dosovitskiy et al., 2021) does not "
              "read intermediate layers this way.")
PAPER_ATTRIBUTION = ("Direct logit attribution (Elhage et al., 2021) splits the final logit exactly into what each "
                     "head and MLP writes into the residual stream; it measures direct effects only, not what a head "
                     "does through later layers. The paper does not decompose the logit.")
PAPER_ABLATION = ("Michel et al. (2019) and Voita et al. (2019) found in language Transformers that most heads can "
                  "be removed one at a time with little loss, a few matter. The paper itself does not ablate heads.")
PAPER_PATCHING = ("Activation patching (causal tracing, Meng et al., 2022) locates where the information that "
                  "decides the prediction is carried; in a class-token ViT it must move from the patch tokens to "
                  "the class token at some layer. The paper does not patch activations.")
PAPER_LINK = ("The paper (Fig. 7) finds local heads in the lowest layers and global heads above, but does not ask "
              "which heads the prediction needs; Michel et al. (2019) found most heads individually dispensable.")

Reliance = Literal["more on local", "more on global", "no difference resolved"]


def _iv(mean: float, low: float, high: float, digits: int = 3) -> str:
    """ "0.123 (95% interval 0.100 to 0.150)"."""
    return f"{mean:.{digits}f} (95% interval {low:.{digits}f} to {high:.{digits}f})"


def _sign(low: float, high: float) -> int:
    """1 when a 95% interval lies above 0, -1 below, 0 when it spans 0."""
    return 1 if low > 0 else -1 if high < 0 else 0


@dataclass(frozen=True, kw_only=True)
class LensReadout(Readout):
    """``first_layer``: the first row (0: embedding) whose lens accuracy reaches half the final row's, own reading."""
    first_layer: int | None


@readout.register(LensResult)
def _lens(result: LensResult) -> LensReadout:
    low, high = result.interval("correct")
    mean = result.mean("correct")
    parts = []
    for r, reading in enumerate(result.readings):
        last, first = result.depth, result.first_layer(reading=reading)
        where = "never" if first is None else "at the embedding" if first == 0 else f"at layer {first}"
        first_row = _iv(float(mean[r, 0]), float(low[r, 0]), float(high[r, 0]))
        parts.append(f"{READINGS[reading]}: top-1 accuracy {first_row}"
                     f" at the embedding, {_iv(float(mean[r, last]), float(low[r, last]), float(high[r, last]))} after "
                     f"the last block; half of that first reached {where}")
    kl = result.mean("kl")[result.readings.index(result.pool)]
    mid = result.depth // 2
    text = (f"{'; '.join(parts)}. KL to the final distribution: {float(kl[0]):.2f} nats at the embedding, "
            f"{float(kl[mid]):.2f} after layer {mid}. Over {result.images} images ({result.seconds:.1f} s).")
    return LensReadout(figure="logit lens", text=text, paper=PAPER_LENS, first_layer=result.first_layer())


@dataclass(frozen=True, kw_only=True)
class AttributionReadout(Readout):
    """``top_heads``: (layer, head) from 1 whose contribution to the true logit is largest, at most three;
    ``residual``: the largest |logit - constant - sum of parts| over images (the decomposition's exactness)."""
    top_heads: tuple[tuple[int, int], ...]
    residual: float


@readout.register(AttributionResult)
def _attribution(result: AttributionResult) -> AttributionReadout:
    heads = result.head_true.double()
    mean = heads.mean(0).flatten()
    low, high = (v.flatten() for v in bootstrap_interval(heads))
    order = mean.argsort(descending=True)[:3].tolist()
    top = tuple((i // result.heads + 1, i % result.heads + 1) for i in order)
    said = "; ".join(f"layer {la} head {h}: {_iv(float(mean[i]), float(low[i]), float(high[i]), 2)}"
                     for (la, h), i in zip(top, order))
    share = heads.sum((1, 2))  # (images,) all heads together
    mlp = result.true[:, [result.index(i, what="mlp") for i in range(result.depth)]].double().sum(1)
    embed = result.true[:, result.parts.index("embed")].double()
    residual = float((result.logit.double() - result.constant.double() - result.true.double().sum(1)).abs().max())
    text = (f"Heads writing most to the true-class logit (mean over {len(result.logit)} images): {said}. All heads "
            f"together {_iv(*_mean_iv(share), 2)}, all MLPs {_iv(*_mean_iv(mlp), 2)}, the embedding "
            f"{_iv(*_mean_iv(embed), 2)}, of a mean logit {float(result.logit.double().mean()):.2f}; the parts add up "
            f"to the logit within {residual:.1e}.")
    return AttributionReadout(figure="direct logit attribution", text=text, paper=PAPER_ATTRIBUTION, top_heads=top,
                              residual=residual)


def _mean_iv(values: torch.Tensor) -> tuple[float, float, float]:
    low, high = bootstrap_interval(values.double())
    return float(values.double().mean()), float(low), float(high)


@dataclass(frozen=True, kw_only=True)
class AblationReadout(Readout):
    """``needed``: heads (layer, head) from 1 whose accuracy drop's 95% interval lies above 0."""
    needed: tuple[tuple[int, int], ...]


@readout.register(AblationResult)
def _ablation(result: AblationResult) -> AblationReadout:
    mean, (low, high) = result.mean("head_accuracy"), result.interval("head_accuracy")
    depth, heads = result.shape
    needed = tuple((i + 1, h + 1) for i, h in (low > 0).nonzero().tolist())
    first = result.top_heads[0] if result.top_heads else divmod(int(mean.flatten().argmax()), heads)
    i, h = first
    logit = result.mean("head_logit")[i, h]
    text = (f"Model accuracy {result.accuracy:.3f} on {result.images} images ({result.kind} ablation). "
            f"{len(needed)} of {depth * heads} heads cost accuracy when ablated alone (95% interval above 0)"
            f"{': ' + ', '.join(f'L{a}H{b}' for a, b in needed) if needed else ''}. The most important, layer "
            f"{i + 1} head {h + 1}: accuracy drop {_iv(float(mean[i, h]), float(low[i, h]), float(high[i, h]))}, "
            f"true-class logit drop {float(logit):.2f}.")
    if float(result.attn_accuracy.abs().sum()) or float(result.mlp_accuracy.abs().sum()):
        for site, name in (("attn", "attention"), ("mlp", "MLP")):
            m, (lo, hi) = result.mean(f"{site}_accuracy"), result.interval(f"{site}_accuracy")
            k = int(m.argmax())
            text += f" Whole {name} of layer {k + 1} ablated: {_iv(float(m[k]), float(lo[k]), float(hi[k]))}."
    return AblationReadout(figure="head ablation", text=text + f" ({result.seconds:.1f} s)", paper=PAPER_ABLATION,
                           needed=needed)


@dataclass(frozen=True, kw_only=True)
class PatchingReadout(Readout):
    """``class_layer``: the first layer (from 1) where patching the class token recovers at least half the logit
    difference (None: never, or no class token; residual patching only)."""
    class_layer: int | None


@readout.register(PatchingResult)
def _patching(result: PatchingResult) -> PatchingReadout:
    mean, (low, high) = result.mean(), result.interval()
    kept = (f"{result.pairs} pairs kept, {result.dropped} dropped (clean and corrupted logit differences closer than "
            f"{result.min_gap:g})")
    if result.what == "head":
        flat = int(mean.flatten().argmax())
        i, h = divmod(flat, mean.shape[1])
        text = (f"Patching one head's output: layer {i + 1} head {h + 1} recovers most, "
                f"{_iv(float(mean[i, h]), float(low[i, h]), float(high[i, h]), 2)} of the logit difference; {kept}.")
        return PatchingReadout(figure="activation patching", text=text, paper=PAPER_PATCHING, class_layer=None)
    patches = mean[:, result.prefix:]  # (depth + 1, patches): entering each block, then after the last
    best, blocks = patches.max(1), len(mean) - 1
    text = (f"Patching one patch token recovers at most {float(best.values[0]):.2f} {result.row_name(0)} and "
            f"{float(best.values[-2]):.2f} {result.row_name(blocks - 1)}")
    layer = None
    if result.prefix:
        cls = [float(v) for v in mean[:, 0]]
        layer = next((k + 1 for k, v in enumerate(cls[:-1]) if v >= 0.5), None)
        text += (f"; the class token {_iv(cls[0], float(low[0, 0]), float(high[0, 0]), 2)} {result.row_name(0)}, "
                 f"{_iv(cls[-2], float(low[-2, 0]), float(high[-2, 0]), 2)} {result.row_name(blocks - 1)} "
                 f"(after the last, where the head reads it: {cls[-1]:.2f}), so the "
                 + ("decision has not reached it by then" if layer is None else
                    f"decision reaches the class token by layer {layer}"))
    return PatchingReadout(figure="activation patching", text=f"{text}; {kept}.", paper=PAPER_PATCHING,
                           class_layer=layer)


@dataclass(frozen=True, kw_only=True)
class LinkReadout(Readout):
    """``reliance``: whether ablating the local heads (below the median distance) costs more than the global ones,
    from the 95% interval of the difference."""
    reliance: Reliance


def reliance(link: LinkResult) -> Reliance:
    """"more on local" when local minus global effect lies above 0 with 95% confidence, "more on global" below."""
    return {1: "more on local", -1: "more on global", 0: "no difference resolved"}[
        _sign(link.difference_low, link.difference_high)]


@readout.register(LinkResult)
def _link(link: LinkResult) -> LinkReadout:
    said = reliance(link)
    unit = "accuracy drop" if link.measure == "accuracy" else "true-class logit drop"
    verdict = {"more on local": "The model relies more on its local heads",
               "more on global": "The model relies more on its global heads",
               "no difference resolved": "No difference between its local and global heads is resolved"}[said]
    text = (f"{verdict}: mean {unit} of the local heads (under the median distance {link.split:.1f} px) "
            f"{link.local:.3f}, of the global heads {link.global_:.3f}; local minus global "
            f"{_iv(link.difference, link.difference_low, link.difference_high)}. Spearman correlation of distance "
            f"and effect over heads {_iv(link.spearman, link.spearman_low, link.spearman_high, 2)}.")
    if link.top_k:
        k, drop, low, high = link.top_k[-1]
        text += (f" The {k} most important heads ablated together cost {_iv(drop, low, high)} of the model's "
                 f"accuracy {link.accuracy:.3f}.")
    text += f" ({link.kind} ablation, {link.images} images)"
    return LinkReadout(figure="distance against ablation", text=text, paper=PAPER_LINK, reliance=said)


def zoo_compute(name: str) -> tuple[float, int]:
    """A zoo entry's recorded test accuracy and the images its training saw, its initialisation's training (e.g.
    masked patch prediction) included."""
    from ..training import zoo
    record = zoo.training_record(name)
    last = record.log[-1]
    seen = last["step"] * record.config.batch_size
    init = record.config.init
    if init and init in zoo.ENTRIES:
        seen += zoo_compute(init)[1]
    return last["test_accuracy"], seen


@dataclass(frozen=True)
class Readouts:
    """Several models' readouts shown together, each under its model's name and compute."""
    named: dict[str, Readout]
    compute: dict[str, tuple[float, int]]  # name -> (recorded test accuracy, images seen in training); may be empty

    def _head(self, name: str) -> str:
        if name not in self.compute:
            return name
        accuracy, seen = self.compute[name]
        return f"{name} (test accuracy {accuracy:.1%} on the full test set, {seen / 1e6:.2f}M training images seen)"

    def _repr_markdown_(self) -> str:
        if not self.named:
            return ""
        said = "\n\n".join(f"**{self._head(n)}:** {r.text}" for n, r in self.named.items())
        return f"{said}\n\n*Literature:* {next(iter(self.named.values())).paper}"

    def __str__(self) -> str:
        return "\n".join(f"{self._head(n)}: {r.text}" for n, r in self.named.items())


def link_readouts(links: dict[str, LinkResult], compute: bool = True) -> Readouts:
    """The link readout of each model of ``links`` (name -> result), with each zoo model's accuracy and images seen
    (``compute``)."""
    from ..training import zoo
    return Readouts({n: readout(link) for n, link in links.items()},
                    {n: zoo_compute(n) for n in links if compute and zoo.trained(n)})
