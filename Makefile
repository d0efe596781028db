# The README's quick start: `make run`, then `make test`. Both build the environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hdap-installed

.PHONY: venv run test bench compile images clean store-down

IMAGE_REGISTRY ?= localhost:5000
IMAGE_TAG ?= 0.1.0

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[pipeline,dev]'
	touch $(STAMP)

## run: start the embedded object store, simulate a demo fleet and run the pipeline locally
run: $(STAMP)
	$(BIN)/hdap demo

## test: the whole test suite (starts and stops its own object store)
test: $(STAMP)
	$(BIN)/python -m pytest

## bench: the figures quoted in the README (slow; writes bench/results/)
bench: $(STAMP)
	$(BIN)/python bench/fleet_scale.py
	$(BIN)/python bench/surrogate_accuracy.py
	$(BIN)/python bench/search_fleet.py
	$(BIN)/python bench/search_cost.py
	$(BIN)/python bench/pipeline_demo.py

compile: $(STAMP)
	$(BIN)/hdap compile --output hdap-pipeline.yaml

## images: the CPU step image and the GPU (TensorRT) build image, where a Docker engine runs
images:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
		docker build -f images/Dockerfile.cpu -t $(IMAGE_REGISTRY)/hdap-step:$(IMAGE_TAG) . && \
		docker build -f images/Dockerfile.gpu -t $(IMAGE_REGISTRY)/hdap-step-gpu:$(IMAGE_TAG) . && \
		echo "built $(IMAGE_REGISTRY)/hdap-step:$(IMAGE_TAG) and $(IMAGE_REGISTRY)/hdap-step-gpu:$(IMAGE_TAG)"; \
	else \
		echo "no Docker engine answers here (docker info failed): nothing was built; run make images where one does" >&2; \
		exit 1; \
	fi

store-down: $(STAMP)
	$(BIN)/hdap store down

clean:
	-$(BIN)/hdap store down
	rm -rf $(VENV) .hdap local_outputs hdap-pipeline.yaml
