# sdspool: setup, demo and tests. `make help` lists the targets.

ORT_VERSION ?= 1.31.1
PYTHON      ?= python3
ORT_DIR     := .ort
CARGO       ?= cargo

# GPU=1 installs onnxruntime-gpu (CUDA and TensorRT providers) and the CUDA 13 libraries it needs
# from PyPI; GPU=auto (the default) does so when an NVIDIA driver is present.
GPU ?= auto
ifeq ($(GPU),auto)
  GPU := $(shell test -e /proc/driver/nvidia/version && echo 1 || echo 0)
endif
ifeq ($(GPU),1)
  ORT_PACKAGES := onnxruntime-gpu==$(ORT_VERSION) nvidia-cuda-runtime~=13.0 nvidia-cublas~=13.0 \
                  nvidia-cuda-nvrtc~=13.0 nvidia-curand~=10.0 nvidia-cufft~=12.0 nvidia-cudnn-cu13~=9.0
else
  ORT_PACKAGES := onnxruntime==$(ORT_VERSION)
endif
STAMP := $(ORT_DIR)/.installed

.PHONY: help setup demo test build bench clean-ort venv demo-model check-demo optimize gpu-prepare gpu-dry-run gpu-summary-check gpu-travel-check

help:
	@echo "make setup   install ONNX Runtime $(ORT_VERSION) from PyPI into $(ORT_DIR)/ (GPU=1 for CUDA/TensorRT)"
	@echo "make demo    build sdspool, submit examples/*.yaml, run the daemon until the spool is empty"
	@echo "make test    run the test suite (what CI runs)"
	@echo "make demo-model  retrain the demo models from scratch (onnx/train_demo_model.py, about 1 h 40 min on 2 cores)"
	@echo "make check-demo  measure the demo model's prompt adherence and rerank lift (onnx/check_demo_model.py)"
	@echo "make bench   CPU benchmark: sdspool bench against optimum's pipeline (onnx/bench_cpu.sh; needs onnx/.venv)"
	@echo "make optimize MODEL=dir OUT=dir [TARGET=cpu] [FP16=1]  ONNX Runtime's SD graph optimizer on a model folder (onnx/optimize.py)"
	@echo "make gpu-prepare     fetch and split what the GPU bench carries into .gpu/ (onnx/gpu/prepare.sh; BENCHMARKS.md)"
	@echo "make gpu-dry-run     the GPU bench's dry run on the CPU with tiny models (needs onnx/.venv; a few minutes)"
	@echo "make gpu-summary-check  the GPU bench's summary on the committed dry-run results (python3, standard library)"
	@echo "make gpu-travel-check   onnx/gpu/travel.sh's stash and restore round trip on a temporary git repo"

# Idempotent: reinstalls only when the wanted package set changes.
setup:
	@if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$(ORT_PACKAGES)" ] && ls $(ORT_DIR)/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then \
	  echo "ONNX Runtime already installed in $(ORT_DIR)/ ($(ORT_PACKAGES))"; \
	else \
	  rm -rf $(ORT_DIR) && mkdir -p $(ORT_DIR) && \
	  echo "installing $(ORT_PACKAGES) into $(ORT_DIR)/" && \
	  $(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
	    --target $(ORT_DIR) $(ORT_PACKAGES) && \
	  ls $(ORT_DIR)/onnxruntime/capi/libonnxruntime.so.* && \
	  echo "$(ORT_PACKAGES)" > $(STAMP); \
	fi

build: setup
	$(CARGO) build --release --locked

# The main job on the committed demo models: submit the example jobs into the spool, run the
# daemon until the spool is empty, then show where the images and manifests landed. The demo
# runs the debug build: the demo models are tiny and the work is ONNX Runtime's (an optimised
# library either way), so it renders as fast as the release build (6-7 s here), while building
# takes 1.5 min instead of 4 on 2 cores, and `make test` reuses what it built. `make build`
# makes the release binary that deployments and `sdspool bench` use.
SDSPOOL := ./target/debug/sdspool --config config.yaml
demo: setup
	$(CARGO) build --locked
	@for job in examples/*.yaml; do $(SDSPOOL) submit --replace $$job || exit 1; done
	$(SDSPOOL) run --until-idle
	@$(SDSPOOL) status
	@echo; echo "Manifests (images, CLIP scores and ranks), contact sheets and sweep grids:"
	@ls -1 local/output/*/manifest.json local/output/*/p*-sheet.png local/output/*/sweep*-grid.png

test: setup
	tests/setup-tools.sh
	$(CARGO) test --locked

# The Python reference stack (torch, diffusers, transformers, optimum; about 6 GB) for the scripts
# in onnx/: training the demo models, golden files. Neither CI nor the daemon needs it.
VENV_PY := onnx/.venv/bin/python
venv: $(VENV_PY)
$(VENV_PY): onnx/requirements.txt
	$(PYTHON) -m venv onnx/.venv
	onnx/.venv/bin/pip install --quiet --disable-pip-version-check -r onnx/requirements.txt
	touch $(VENV_PY)

demo-model: venv
	$(VENV_PY) onnx/train_demo_model.py

check-demo: venv build
	$(VENV_PY) onnx/check_demo_model.py
# sdspool bench beside the Python reference on the same models; results in local/bench/.
bench: build
	onnx/bench_cpu.sh

clean-ort:
	rm -rf $(ORT_DIR)

# The graph-optimisation step (onnx/README.md, "Exporting a real checkpoint for sdspool", step 4).
TARGET ?= cuda
optimize: venv
	@test -n "$(MODEL)" -a -n "$(OUT)" || { echo "usage: make optimize MODEL=dir OUT=dir [TARGET=cpu] [FP16=1]"; exit 2; }
	$(VENV_PY) onnx/optimize.py "$(MODEL)" "$(OUT)" --target $(TARGET) $(if $(FP16),--fp16)

# The GPU bench (BENCHMARKS.md, "GPU: how to run"): prepare here, run on the device, dry-run here.
gpu-prepare:
	onnx/gpu/prepare.sh
GPU_DRY_OUT ?= local/gpu-dry-run
gpu-dry-run: venv build
	rm -rf $(GPU_DRY_OUT) && $(VENV_PY) onnx/gpu/bench_gpu.py --dry-run --out $(GPU_DRY_OUT) --work $(GPU_DRY_OUT)/work \
	  --sdspool target/release/sdspool --ort-lib $$(ls $(ORT_DIR)/onnxruntime/capi/libonnxruntime.so.* | head -1) \
	  --command "make gpu-dry-run"
	$(PYTHON) onnx/gpu/summarize.py $(GPU_DRY_OUT)
# dry-run: the committed dry run's results; targets: synthetic rows, one target met and one
# missed, so `--check` must exit 1.
gpu-summary-check:
	@for d in dry-run targets; do \
	  $(PYTHON) onnx/gpu/summarize.py onnx/gpu/testdata/$$d | diff -u onnx/gpu/testdata/$$d/rows.md - || exit 1; done
	@if $(PYTHON) onnx/gpu/summarize.py onnx/gpu/testdata/targets --check >/dev/null; then \
	  echo "summarize.py --check passed a missed target"; exit 1; fi
	@echo "gpu summary ok"
gpu-travel-check:
	bash onnx/gpu/test_travel.sh
