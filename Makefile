# The two set-up commands of the README: `make demo` (quick start end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# DEVICE=gpu installs paddlepaddle-gpu (CUDA 11.8, cuDNN 8.6; TensorRT 8.x for --use_trt) in
# place of the CPU wheel; both give the same `paddle` module, so nothing else changes.
DEVICE ?= cpu
PADDLE_VERSION := 2.6.2
PADDLE_PKG_cpu := paddlepaddle
PADDLE_PKG_gpu := paddlepaddle-gpu
PADDLE_PKG := $(PADDLE_PKG_$(DEVICE))
STAMP := $(VENV)/.installed-$(DEVICE)
DATA ?= data/optic_disc_seg
DEMO_DIR ?= demo_output

.PHONY: demo test install data clean

$(STAMP): requirements.txt pyproject.toml
	@test -n "$(PADDLE_PKG)" || { echo "error: DEVICE must be cpu or gpu, got '$(DEVICE)'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the other device's wheel would shadow this one's `paddle` module
	$(PY) -m pip uninstall -q -y $(filter-out $(PADDLE_PKG),$(PADDLE_PKG_cpu) $(PADDLE_PKG_gpu)) 2>/dev/null || true
	$(PY) -m pip install -q -r requirements.txt $(PADDLE_PKG)==$(PADDLE_VERSION)
	# paddleslim pins opencv-python==4.6 (a numpy-1-only cv2 beside ours): take it without deps
	$(PY) -m pip install -q --no-deps paddleslim==2.6.0
	# our own package, editable: `import paddleseg` works from any folder
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# the real optic_disc_seg when it can be downloaded, else a synthetic set in the same layout
data: $(STAMP)
	$(PY) tools/get_optic_disc.py --dataset_root $(DATA)

demo: data
	bash tools/demo.sh $(PY) $(DEMO_DIR)

# two worker processes (pytest-xdist), one per core of the 2-core machines the suite is sized for;
# each test file runs in one worker (--dist loadscope), so its module fixtures (a 2-rank job, a
# prune run, a traced model) are built once. CI prints the 15 slowest.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15 tests

clean:
	rm -rf $(DEMO_DIR)
