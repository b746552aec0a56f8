# One entry point for every job. Each target depends on `setup`, so a fresh clone needs
# nothing typed before `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
MODEL := model_store/mnist_cnn.pt

.PHONY: setup data train archive train-and-archive serve stop ui run test test-fast lint format bench accuracy ceiling soak kserve-store k8s-rules retrain base-image images compose-smoke gpu-check clean

setup: $(SETUP_STAMP)

# Re-installs only when pyproject.toml changed, so a second `make setup` takes no time.
$(SETUP_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $@

data: setup
	$(PY) -m training.data

train: setup
	$(PY) -m training --mode both

archive: setup
	$(PY) -m serving.archive

# Trains only when no model exists yet, or when asked with FORCE=1.
train-and-archive: setup
	@if [ "$(FORCE)" = "1" ] || [ ! -f $(MODEL) ]; then \
		$(PY) -m training --mode both; \
	else \
		echo "Using the trained model in $(MODEL) (FORCE=1 retrains)."; \
	fi
	$(PY) -m serving.archive

serve: setup
	$(PY) -m serving.server start

# Only the environment, not an up-to-date one: stopping must work offline, and with no .venv
# nothing of this checkout can be running.
stop:
	@if [ -x $(PY) ]; then $(PY) -m serving.server stop; fi

ui: setup
	$(PY) -m client_ui

# Starts TorchServe, then the app in the foreground; Ctrl-C stops both.
run: train-and-archive
	$(PY) -m serving.server start
	trap '$(PY) -m serving.server stop' EXIT; $(PY) -m client_ui

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# About a minute on 2 cores: no training, no TorchServe, no browser (an untrained model where
# accuracy is not what a test checks), on two processes since much of it waits on NiceGUI's
# event loop.
test-fast: setup
	$(PY) -m pytest -m "not slow and not browser" -n 2 $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: setup
	$(PY) -m benchmarks $(if $(filter 1,$(QUICK)),--quick,)

# Accuracy per drawing style through TorchServe, for the trained model (results/accuracy.md);
# ACCURACY_ARGS="--images DIR..." adds digits people drew (docs/drawings.md).
accuracy: setup
	$(PY) -m benchmarks.accuracy $(ACCURACY_ARGS)

# How much of each style's loss is the network's: a network 14 times larger, and both trained
# with very thick drawings, read the same drawings (results/ceiling.md, docs/drawings.md).
ceiling: setup
	$(PY) -m benchmarks.ceiling $(CEILING_ARGS)

# Steady load on a private TorchServe, watching memory, files, threads and logs for leaks
# (10 minutes; SOAK_MINUTES=3 for a shorter run). Writes results/soak.json and soak.md.
soak: setup
	$(PY) -m benchmarks.soak $(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES),)

# The next model version from the drawings people labelled in the app (results/retrain.md);
# archived beside the current one only when it is not worse (docs/retraining.md).
retrain: setup
	$(PY) -m training.retrain $(RETRAIN_ARGS)

# The storage layout the project's KServe runtime mounts at /mnt/models, with the store's default
# version; the container image takes that version too (docs/deployment.md).
kserve-store: train-and-archive
	$(PY) -m serving.kserve --out build/kserve

# The alert rules (deploy/prometheus/alerts.yml) as a PrometheusRule for the cluster.
k8s-rules: setup
	$(PY) deploy/k8s/prometheus_rule.py --out build/k8s/prometheus-rule.yaml

# Container images and the compose stack with podman (docs/deployment.md). Where no image
# registry is reachable, `make base-image` makes a Debian base from Debian's packages and
# BASE_IMAGE=localhost/bookworm-min uses it; PODMAN_SANDBOX=1 runs podman with
# deploy/containers/containers.conf, for machines without cgroup and rlimit control.
BASE_IMAGE ?= debian:bookworm-slim
PODMAN_ENV := $(if $(filter 1,$(PODMAN_SANDBOX)),CONTAINERS_CONF=$(CURDIR)/deploy/containers/containers.conf)

base-image:
	$(PODMAN_ENV) deploy/containers/base-image.sh

images: kserve-store
	$(PODMAN_ENV) BASE_IMAGE=$(BASE_IMAGE) deploy/containers/build-images.sh

# Builds, starts the stack, draws in a real browser, reads the row in the stack's PostgreSQL,
# asks its Prometheus, and removes the containers and volumes (the images stay for next time);
# then runs the image as deploy/k8s's KServe runtime on `make kserve-store`'s layout.
compose-smoke: images
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,compose]'
	$(PODMAN_ENV) COMPOSE_SMOKE=1 $(PY) -m pytest -p no:cacheprovider -s -v tests/deploy/test_compose_stack.py tests/deploy/test_kserve_container.py

# Train, archive and serve on a CUDA GPU, with accuracy and latency (results/gpu_check.json),
# then the tests marked gpu.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check
	$(PY) -m pytest -m gpu -v $(PYTEST_ARGS)

# Stops TorchServe first: its pid file is in logs/, and its model files are removed.
clean: stop
	rm -rf logs model_store/*.mar model_store/*.pt model_store/*.pth model_store/*.partial results/*.json .pytest_cache
