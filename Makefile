# Every target that runs Python creates and fills .venv from the project's own files first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned here rather than in setup.cfg so that users elsewhere keep their own
# build; these two releases are the ones this project is developed and tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv test test-slow benchmark lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[all]" $(TORCH_SPEC)
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Writes outputs/benchmark.{json,md,png}; the README's table came from the same command with
# docs/benchmarks/ as the output folder.
benchmark: venv
	$(PY) -m biglittle_sam_tools.benchmark --json outputs/benchmark.json \
		--markdown outputs/benchmark.md --plot outputs/benchmark.png $(BENCH_ARGS)

lint: venv
	$(PY) -m black --check biglittle_sam tools tests
	$(PY) -m isort --check-only biglittle_sam tools tests
	$(PY) -m flake8 biglittle_sam tools tests

format: venv
	$(PY) -m isort biglittle_sam tools tests
	$(PY) -m black biglittle_sam tools tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
