# Two commands do everything on a fresh machine (Python 3.11+):
#   make lab    set up .venv (first run only) and open working copies of the notebooks (lab/) in JupyterLab
#   make test   set up .venv (first run only) and run every test, notebooks included
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Use the shared CIFAR-10 copy beside the checkout when there is one and nothing else is set.
SHARED_DATA := $(abspath ../shared/data)
export VITLAB_DATA ?= $(if $(wildcard $(SHARED_DATA)/cifar10),$(SHARED_DATA),)

.PHONY: lab lab-reset test setup browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this project is tested with.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev,notebooks]'
	touch $(STAMP)

# JupyterLab autosaves outputs into the notebooks it serves: it serves working copies in lab/ (git-ignored),
# copied from notebooks/ where missing; a copy there is never overwritten, except by make lab-reset.
lab: $(STAMP)
	@$(BIN)/python -c "from vitlab.settings import copy_notebooks; d = copy_notebooks(); d and print('lab/:', \
	  ', '.join(d), 'differ from the committed notebooks; make lab-reset replaces the copies (edits lost)')"
	$(BIN)/jupyter lab --notebook-dir=lab $(if $(filter 0,$(shell id -u)),--allow-root,)

lab-reset: $(STAMP)
	$(BIN)/python -c "from vitlab.settings import copy_notebooks; copy_notebooks(replace=True)"

# Debian's Chromium for the browser tests (Playwright's own browser download cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

# Two pytest-xdist workers: each notebook's browser test and its nbmake check stay on one (tests/notebook_runs.py).
test: $(STAMP) browser
	VITLAB_QUICK=1 $(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV) .cache .pytest_cache test-artifacts
