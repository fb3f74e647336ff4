# mmseg_pm developer entry points. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# pinned: three '=' so a local "+cpu" torch wheel is never picked
TORCH_SPEC := torch===2.13.0 torchvision==0.28.0
STAMP := $(VENV)/.mmseg_pm-installed

.PHONY: install test test-fast demo clean-demo results readme-figure

install: $(STAMP)

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The stack, in the order of environment.md. Each step is skipped when already satisfied, so a
# second run takes seconds; the stamp is rebuilt when requirements or setup.py change.
$(STAMP): $(VENV)/bin/python requirements.txt requirements-test.txt setup.py
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=77.0.3,<81" wheel ninja
	@if $(PY) -c "import torch, torchvision; from packaging.version import Version as V; \
	    v = V(torch.__version__.split('+')[0]); assert V('2.1') <= v < V('2.14'); torchvision.ops.nms" 2>/dev/null; \
	then echo "install: keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else $(PIP) install $(TORCH_SPEC); fi
	@if $(PY) -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; \
	then echo "install: keeping mmcv 2.1.0 (full)"; \
	else echo "install: building mmcv 2.1.0 from source (about 10 min on 2 cores)"; \
	     MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install --no-build-isolation "mmcv==2.1.0"; fi
	$(PIP) install -r requirements.txt -r requirements-test.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -c "import mmseg_pm, mmcv.ops, mmseg.models; print('install: ok, mmseg_pm', mmseg_pm.__version__)"
	touch $(STAMP)

# The whole suite: unit tests and end-to-end tests on ../shared/data/ade20k_sample.
test: install
	$(PY) -m pytest tests -q

# Unit tests only (skips the end-to-end runs marked `e2e`).
test-fast: install
	$(PY) -m pytest tests -q -m "not e2e"

# The main job on the real sample: compress + finetune + test + compare every method.
demo: install
	bash tools/demo.sh

# README results table: every method on Segmenter ViT-S 512 beside mmseg's stock model and our
# uncompressed model: GFLOPs (both conventions) and CPU fp32 latency / throughput at batch 1
# and 8 on the sample's images, one interleaved run.
results: install
	$(PY) tools/dataset_converters/prepare_ade20k_sample.py --out data/ade20k_sample
	$(PY) tools/analysis_tools/results_table.py --data-root data/ade20k_sample/ADEChallengeData2016 \
	    --batch-sizes 1 8 --out work_dirs/results.json --markdown work_dirs/results.md

# The README's comparison picture (docs/compare_demo.png), made by the tool from `make demo`'s
# run: run `make demo` first.
readme-figure: install
	@test -f work_dirs/demo/compare/compare.png || { echo "run make demo first"; exit 2; }
	mkdir -p docs && cp work_dirs/demo/compare/compare.png docs/compare_demo.png

clean-demo:
	rm -rf work_dirs/demo data/ade20k_sample
