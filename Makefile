# Every target that runs Python creates and fills .venv from the project's own files first: `make demo`
# with what the demo needs (core + [demo]), every other target with everything (.[all]: the extras,
# tests and lint). pip shows its progress: the first install downloads torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned here rather than in setup.cfg so that users elsewhere keep their own
# build; these two releases are the ones this project is developed and tested with.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Two test processes (pytest-xdist), one file each at a time so module fixtures are built once: most
# tests keep one core busy, and the suite runs on two. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=
DEMO_ARGS ?=
GPU_ARGS ?=
PROXY_ARGS ?=

.PHONY: venv venv-demo browser test test-slow benchmark proxy-benchmark proxy-benchmark-v2 gpu-check demo \
	lint format clean

venv: $(VENV)/.installed
venv-demo: $(VENV)/.installed-demo

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[all]" $(TORCH_SPEC)
	touch $@

$(VENV)/.installed-demo: setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[demo]" $(TORCH_SPEC)
	touch $@

# Debian's Chromium for the demo's real-browser test (Playwright drives /usr/bin/chromium; nothing is
# downloaded by a test tool). Where it cannot be installed, that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "Chromium is not installed (needs root and apt-get): the browser test will skip"

# --durations=15: the 15 slowest tests, at the end of the log.
test: venv browser
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Writes outputs/benchmark.{json,md,png} (~6 min on 2 cores); the README's main table came from the
# same command with docs/benchmarks/ as the output folder. Batches 4 and 8 and --onnx: separate runs
# (README), since every model at batch 8 plus onnxruntime sessions needs more than 24 GB.
benchmark: venv
	$(PY) -m biglittle_sam_tools.benchmark --device cpu --batch-sizes 1 --out-dir outputs $(BENCH_ARGS)

# On one CUDA GPU, <= 8 minutes: the CUDA-marked tests, SAM ViT-B against bl_b at every keep ratio in
# fp32 and bf16 at batch 1 and 8, and a 50-step distill smoke run; writes outputs/gpu_check/. Without
# a CUDA device it prints one line and succeeds.
gpu-check: venv
	$(PY) -m experiments.gpu_check --out-dir outputs/gpu_check $(GPU_ARGS)

# The whole distillation pipeline at SAM's token geometry, on CPU (docs/benchmarks/proxy.md): writes
# outputs/proxy/ with the table on the test split. Choose recipes with PROXY_ARGS="--split dev".
# On a GPU: make proxy-benchmark PROXY_ARGS="--device cuda". The committed demo models came from
# the same command with --assets-dir biglittle_sam/assets. The experiments run from this clone.
proxy-benchmark: venv
	$(PY) -m experiments.proxy --out-dir outputs/proxy $(PROXY_ARGS)

# The second proxy benchmark (docs/benchmarks/proxy_v2.md): a teacher shaped like SAM ViT-B and the
# big.LITTLE student against dense students of the same encoder cost; <= 120 min on 2 cores, resumes
# with PROXY_ARGS="--resume", the same on a GPU with PROXY_ARGS="--device cuda".
proxy-benchmark-v2: venv
	$(PY) -m experiments.proxy2 --out-dir outputs/proxy_v2 $(PROXY_ARGS)

# The interactive demo on http://127.0.0.1:7860 (built-in proxy models and examples). More models:
# make demo DEMO_ARGS="--sam-checkpoint sam_vit_b_01ec64.pth --checkpoint bl_b=bl_b.pth"
demo: venv-demo
	$(PY) -m biglittle_sam_demo.app $(DEMO_ARGS)

LINT_PATHS := biglittle_sam tools demo tests experiments

lint: venv
	$(PY) -m black --check $(LINT_PATHS)
	$(PY) -m isort --check-only $(LINT_PATHS)
	$(PY) -m flake8 $(LINT_PATHS)

format: venv
	$(PY) -m isort $(LINT_PATHS)
	$(PY) -m black $(LINT_PATHS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
