# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing and
# install a CPU build of torch before synfer, so that resolving synfer's `torch` requirement never
# pulls the multi-gigabyte CUDA wheels. Set TORCH_SPEC / TORCH_INDEX to choose another build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.synfer-installed

export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench world world-fast world-guidance world-au-scale clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || \
		$(PY) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[test]"
	@touch $@

install: $(STAMP)

# The shipped world model (trained by `make world`): smiling faces, then one row per expression in the card's preview.
WORLD_PROMPTS := synfer/assets/world/prompts.txt
WORLD_OPTIONS := --model world --captions plain --prompt-file $(WORLD_PROMPTS) --scheduler dpm-solver++ --steps 10 \
	--guidance-scale 5 --device cpu

demo: install
	$(VENV)/bin/synfer generate $(WORLD_OPTIONS) --aus "6,12" --n 16 --out runs/demo
	$(VENV)/bin/synfer inspect runs/demo
	$(VENV)/bin/synfer generate $(WORLD_OPTIONS) --n 64 --distribution balanced --out runs/demo-balanced

# SynFER's ablation and data claims on the procedural world, every stage trained on the CPU (on 2 cores about 100 minutes
# to train the model and 80 to measure it); world-fast runs the same chain at toy sizes in a few minutes.
world: install
	$(PY) benchmarks/world.py --work runs/world

world-fast: install
	$(PY) benchmarks/world.py --fast --work runs/world-fast

# How world.py's semantic-guidance step size was chosen: the relabel member judges faces of another seed (never the judge).
world-guidance: install
	$(PY) benchmarks/world_guidance.py --work runs/world --model world

# How a world model's AU attention weight (--au-scale) is chosen, by the same rule's kind: member and annotator, seed 1;
# then each weight measured like world.py's adapter row (judge, seed 0, test split).
world-au-scale: install
	$(PY) benchmarks/world_au_scale.py --work runs/world --model world --measure

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check synfer tests benchmarks

bench: install
	@for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
