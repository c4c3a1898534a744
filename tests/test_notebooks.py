"""Notebook prose takes its numbers from the readouts: no model figure is typed into markdown."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: A number followed by a unit of a measurement on a model: "12.6 px", "77.7%", "8 percent".
MEASURED = re.compile(r"\d[\d,.]*\s*(?:px\b|%|percent\b)")
#: The only such phrases notebook markdown may hold: the paper's own numbers and the method's constants.
ALLOWED = (
    "95% bootstrap interval",  # the readouts' interval (vitlab.views.readouts.LEVEL)
    "95% intervals",
    "80% of those become a learned `[mask]` embedding",  # the paper's 80/10/10 corruption (appendix B.1.2)
    "10% take the embedding of another patch",
    "10% stay as they are",
    "79.9% on ImageNet",  # the paper's masked-patch-prediction result (section 4.6)
    "2% above training from scratch",
    "4% below supervised pre-training",
)


def markdown_of(notebook: dict) -> str:
    """The text of every markdown cell of a notebook, whitespace collapsed to single spaces."""
    cells = [c for c in notebook["cells"] if c["cell_type"] == "markdown"]
    return " ".join(" ".join("".join(c["source"]).split()) for c in cells)


def typed_figures(text: str, allowed: tuple[str, ...] = ALLOWED) -> list[str]:
    """The measured-looking numbers with their unit in ``text``, outside the allowed phrases."""
    for phrase in allowed:
        text = text.replace(phrase, " ")
    return [m.group() for m in MEASURED.finditer(text)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_markdown_types_in_no_model_figure(path):
    found = typed_figures(markdown_of(json.loads(path.read_text())))
    assert not found, f"{path.name}: numbers belong in the readout beside the figure, not in markdown: {found}"


def test_every_allowed_phrase_is_used():
    """The allow-list holds no stale entry: each phrase is quoted by some notebook."""
    text = " ".join(markdown_of(json.loads(p.read_text())) for p in NOTEBOOKS)
    assert [p for p in ALLOWED if p not in text] == []


def test_the_check_catches_planted_figures():
    planted = {"cells": [
        {"cell_type": "markdown", "source": ["The encoder reaches 77.7% after\n", "40 epochs."]},
        {"cell_type": "markdown", "source": ["Its most local head attends 12.6 px; another ", "14px, 1,000 images."]},
        {"cell_type": "code", "source": ["x = '99.9%'"]},  # code is not prose
        {"cell_type": "markdown", "source": ["a 95% bootstrap\ninterval over images; 8 percent of heads"]},
    ]}
    assert typed_figures(markdown_of(planted)) == ["77.7%", "12.6 px", "14px", "8 percent"]
    assert typed_figures("it reaches 77.7% and 12.6 px", allowed=()) == ["77.7%", "12.6 px"]
    assert typed_figures("a 95% bootstrap interval", allowed=()) == ["95%"]  # allowed only by the list


def test_the_tour_lists_every_notebook():
    """00's table of notebooks links each notebook of the folder, and nothing else."""
    tour = next(p for p in NOTEBOOKS if p.name.startswith("00_"))
    linked = set(re.findall(r"\]\(([\w-]+\.ipynb)\)", markdown_of(json.loads(tour.read_text()))))
    assert linked == {p.name for p in NOTEBOOKS} - {tour.name}


#: A run-in heading: a paragraph opening with a bold sentence ("**The hybrid against both.** Model A is ...").
#: A bold label ending in a colon ("**What to look for:**") recurs by design and is no heading.
_RUN_IN = re.compile(r"(?:^|\n\n)\*\*([^*]+?[.?!])\*\*")


def headings(notebook: dict) -> tuple[list[str], list[str]]:
    """The ``#`` headings and the run-in headings of a notebook's markdown cells."""
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "markdown"]
    return ([h for text in cells for h in re.findall(r"^#+ (.+)$", text, re.M)],
            [h for text in cells for h in _RUN_IN.findall(text)])


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", re.sub(r"^\d+\.\s*", "", text.lower())).split())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_heading_repeated_within_a_notebook(path):
    """A reader sees each heading once: no two alike, and no run-in heading repeating the opening overview (05
    printed "The hybrid against both" in its overview and again as a heading)."""
    notebook = json.loads(path.read_text())
    marked, run_in = headings(notebook)
    said = [_words(h) for h in marked + run_in]
    assert sorted({h for h in said if said.count(h) > 1}) == []
    overview = _words("".join(notebook["cells"][0]["source"]))
    assert [h for h in run_in if _words(h) in overview] == []


def test_the_heading_check_catches_repeats():
    planted = {"cells": [
        {"cell_type": "markdown", "source": ["# Title\n", "\n", "4. **CKA**: the hybrid against both.\n"]},
        {"cell_type": "markdown", "source": ["**What to look for:** a\n", "\n", "**The hybrid against both.** B"]},
        {"cell_type": "markdown", "source": ["## 1. Title\n", "\n", "**What to look for:** again"]},
    ]}
    marked, run_in = headings(planted)
    assert marked == ["Title", "1. Title"] and run_in == ["The hybrid against both."]
    assert _words(marked[0]) == _words(marked[1])  # numbering and case aside, the same heading
