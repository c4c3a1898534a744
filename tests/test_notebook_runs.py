import pytest

from notebook_runs import nbmake_error, pair


def _code(source, count, outputs=()):
    return {"cell_type": "code", "source": source, "execution_count": count, "outputs": list(outputs)}


MARKDOWN = {"cell_type": "markdown", "source": "# title"}
ERROR = {"output_type": "error", "ename": "ZeroDivisionError", "evalue": "division by zero",
         "traceback": ["ZeroDivisionError: division by zero"]}


@pytest.mark.parametrize("cells, failing", [
    ([MARKDOWN, _code("a = 1", 1), _code("", None), _code("a", 2)], None),  # an empty cell is not run
    ([MARKDOWN, _code("a = 1", 1), _code("1/0", 2, [ERROR]), _code("a", None)], 2),
    ([_code("a = 1", 1), _code("a", None)], 1),  # never ran (Run All stopped, or timed out)
    ([_code("a = 1", 2), _code("a", 1)], 0),  # out of order
    ([_code("a = 1", 1), _code("a", 3)], 1),  # a cell ran twice, or the kernel was not fresh
])
def test_the_browser_record_fails_where_nbmake_would(cells, failing):
    error = nbmake_error({"cells": cells})
    assert (error and error.failing_cell_index) == failing
    if failing == 2:
        assert "ZeroDivisionError" in error.summary and "1/0" in error.trace


@pytest.mark.parametrize("cells, failing", [
    ([MARKDOWN, _code("a = 1", 7), _code("", None), _code("a", 8)], None),  # counts on from a kernel's earlier run
    ([_code("a = 1", 7), _code("a", 9)], 1),
    ([_code("a = 1", 7), _code("a", None)], 1),
])
def test_a_rerun_in_a_used_kernel_counts_on_from_its_first_cell(cells, failing):
    error = nbmake_error({"cells": cells}, first=None)
    assert (error and error.failing_cell_index) == failing
    assert nbmake_error({"cells": cells}) is not None  # a fresh kernel's record must start at 1


def test_a_notebook_pairs_with_its_browser_tests_only():
    assert pair("tests/test_browser.py::test_tour_notebook") == pair("notebooks/00_tour.ipynb::00_tour.ipynb") == "tour"
    assert pair("notebooks/05_vit_vs_resnet.ipynb::05_vit_vs_resnet.ipynb") == "vit_vs_resnet"
    assert pair("tests/test_browser.py::test_static_path[05_vit_vs_resnet.ipynb]") == "vit_vs_resnet"
    assert pair("tests/test_other.py::test_static_path[05_vit_vs_resnet.ipynb]") is None
    assert pair("tests/test_train.py::test_tour_notebook") is None
    assert pair("tests/test_browser.py::test_cut_labels") is None
