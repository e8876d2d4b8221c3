# d2_edwpose: `make demo` (the main job) and `make test` set up everything they need.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.d2_edwpose_setup
PYTEST_ARGS ?=

.PHONY: setup demo test test-all cuda-check clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): setup.py d2_edwpose/bootstrap_env.py
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) d2_edwpose/bootstrap_env.py
	@touch $@

demo: setup
	$(PYTHON) -m d2_edwpose.tools.cpu_demo

# Default suite (< 10 min on 2 CPU cores); `make test-all` adds the slow end-to-end checks.
test: setup
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS) tests

test-all: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS) tests

# A GPU machine's short check (a few minutes): 20 training iterations of the CPU demo config on
# small synthetic sets, detectron2's evaluation, then the benchmark, on $(CHECK_DEVICE).
# `make cuda-check CHECK_DEVICE=cpu` runs the same commands on a CPU.
CHECK_DEVICE ?= cuda
CHECK_DIR ?= output/cuda_check

cuda-check: setup
	$(PYTHON) -m d2_edwpose.tools.generate_synthetic_keypoints --output $(CHECK_DIR)/data \
	    --num-train 64 --num-val 16
	D2_EDWPOSE_SYNTHETIC_ROOT=$(CHECK_DIR)/data $(PYTHON) train_net.py \
	    --config-file configs/cpu_demo_keypoint_rcnn_mv3_fpn_320_edw.yaml \
	    MODEL.DEVICE $(CHECK_DEVICE) SOLVER.MAX_ITER 20 TEST.PRECISE_BN.ENABLED False \
	    OUTPUT_DIR $(CHECK_DIR)/train
	$(PYTHON) -m d2_edwpose.tools.benchmark --device $(CHECK_DEVICE) --stock-r50 --optimize \
	    --num-people 20 --warmup 2 --repeats 5

clean:
	rm -rf $(VENV) output
