# The two set-up commands of the README: `make demo` (quick start end to end) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/optic_disc_seg
DEMO_DIR ?= demo_output

.PHONY: demo test install data clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# paddleslim pins opencv-python==4.6 (a numpy-1-only cv2 beside ours): take it without deps
	$(PY) -m pip install -q --no-deps paddleslim==2.6.0
	touch $(STAMP)

install: $(STAMP)

# the real optic_disc_seg when it can be downloaded, else a synthetic set in the same layout
data: $(STAMP)
	$(PY) tools/get_optic_disc.py --dataset_root $(DATA)

demo: data
	bash tools/demo.sh $(PY) $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO_DIR)
