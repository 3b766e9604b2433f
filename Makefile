# skinedge: the two set-up commands of the README, and their parts.
#   make demo   install the workstation environment and run train -> convert -> compare -> card -> classify (minutes)
#   make test   install both environments, check style (ruff) and run the tests (device tests without TensorFlow)
PYTHON   ?= python3
VENV     ?= .venv
DEVVENV  ?= .venv-device
SHARED   ?= ../shared
DATA     ?= $(SHARED)/data/ham10000
WEIGHTS  ?= $(SHARED)/weights/mobilenet_v2_1.0_imagenet_no_top.h5
RUN      ?= runs/demo
BUNDLE   ?= models/demo
REPORT   ?= reports/demo
# The demo is a real but short run; FULL=1 trains the recipe of the shipped models/ham10000 in one command (about
# 60-120 min on a 2-core CPU, minutes on a GPU): 192 px, all eight orientations, class-balanced sampling with strong
# augmentation, the whole backbone fine-tuned with warm-up and mixup, QAT half distilled, and a bundle that averages
# the eight views of each image. (The shipped bundle's run used --seed 1 --split-seed 42; drop them for a fresh draw.)
ifeq ($(FULL),1)
TRAIN_ARGS ?= --img-size 192 --epochs 16 --patience 16 --qat-epochs 2 --finetune-from 0 --mixup 0.4 --qat-distill 0.5 \
	--warmup-epochs 1 --rot90 --balance oversample --augment-level strong --seed 1 --split-seed 42 --deterministic
CONVERT_ARGS ?= --tta dihedral
else
TRAIN_ARGS ?= --img-size 96 --head-epochs 2 --epochs 2 --qat-epochs 1 --limit 1200
# a few-minute model is barely trained: its near-uniform outputs make int8/QAT agreement a poor gate
CONVERT_ARGS ?= --min-agreement 0.3
endif

.PHONY: demo test lint test-device test-train install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[train,test]'
	touch $@

$(DEVVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVVENV)
	$(DEVVENV)/bin/pip install --upgrade pip
	$(DEVVENV)/bin/pip install -e '.[device,test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf $(RUN)
	$(VENV)/bin/skinedge train $(DATA) --out $(RUN) --weights $(WEIGHTS) $(TRAIN_ARGS)
	$(VENV)/bin/skinedge convert $(RUN) --out $(BUNDLE) $(CONVERT_ARGS)
	$(VENV)/bin/skinedge compare --run $(RUN) --bundle $(BUNDLE) --out $(REPORT)
	$(VENV)/bin/skinedge card $(BUNDLE) --report $(REPORT) --run $(RUN)
	awk -F, '$$1=="test"{print $$2}' $(RUN)/split.csv | head -5 | xargs -d '\n' $(VENV)/bin/skinedge device classify $(BUNDLE)

# Style first (ruff, configured in pyproject.toml): a failure costs seconds rather than a whole test run.
lint: $(DEVVENV)/.installed
	$(DEVVENV)/bin/ruff check .

# The device tests run where TensorFlow is not installed at all (SKINEDGE_DEVICE_ONLY=1 makes them check that).
test-device: $(DEVVENV)/.installed
	SKINEDGE_DEVICE_ONLY=1 $(DEVVENV)/bin/python -m pytest -m "not train" tests

test-train: $(VENV)/.installed
	SKINEDGE_SHARED=$(abspath $(SHARED)) $(VENV)/bin/python -m pytest -m train tests

test: lint test-device test-train

clean:
	rm -rf $(VENV) $(DEVVENV) runs reports models/demo *.egg-info
