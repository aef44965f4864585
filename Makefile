# The README's two commands: `make demo` and `make test` (`make test-fast`: the tests not marked slow).
# Each creates or reuses $(VENV) and installs what is missing (a second run skips what is installed), then
# runs. DETECTRON2_SRC (a pip requirement: a path, an sdist or a git URL such as
# git+https://github.com/facebookresearch/detectron2.git) builds
# detectron2 from it instead of the default route (tools/install_detectron2.sh).
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DETECTRON2_SRC ?=
DEMO_DIR ?= output/demo
STAMP := $(VENV)/.ge_detectron_installed
D2_SRC_RECORD := $(VENV)/.detectron2_src

.PHONY: install demo test test-fast gpu-check clean FORCE

install: $(STAMP)

# Rewritten only when DETECTRON2_SRC changes, which then re-runs the installation.
$(D2_SRC_RECORD): FORCE
	@mkdir -p $(VENV)
	@echo '$(DETECTRON2_SRC)' | cmp -s - $@ || echo '$(DETECTRON2_SRC)' > $@

$(STAMP): Makefile setup.py tools/install_detectron2.sh $(wildcard ge_detectron/csrc/*) $(D2_SRC_RECORD)
	@test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel "setuptools<82" ninja
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_PINS)
	PYTHON=$(PY) DETECTRON2_SRC='$(DETECTRON2_SRC)' bash tools/install_detectron2.sh
	$(PY) -m pip install -q fvcore pycocotools faster-coco-eval opencv-python-headless shapely tabulate matplotlib protobuf pytest hypothesis onnx onnxruntime onnxscript
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import ge_detectron; from ge_detectron.ops import native_kernels as k; print('ge_detectron', ge_detectron.__version__, '| fused excite op, CPU:', k('cpu'), '| CUDA:', k('cuda'))"
	@touch $@

DEMO_CONFIG := configs/demo/faster_rcnn_ge_theta_e8_r50_fpn_shapes.yaml

demo: install
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/visualize_predictions.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_DIR)

# pytest's settings (test paths, options, the `slow` marker) are in pytest.ini.
test: install
	$(PY) -m pytest
	TRITON_INTERPRET=1 $(PY) -m pytest tests/test_excite_triton.py  # the Triton kernels on the CPU

# Everything but the tests marked slow (those that train or run a subprocess).
test-fast: install
	$(PY) -m pytest -m "not slow"

# On a CUDA machine: the GPU check in at most 9 minutes, report in output/gpu_check/ (docs/benchmarks.md, GPU).
gpu-check: install
	$(PY) tools/gpu_check.py

clean:
	rm -rf build ge_detectron/_C*.so output
