# longrun: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
CLIENT := clients/python
PROTOGEN = $(PY) $(CLIENT)/protogen.py --link-dir $(BUILD)/protos
# Generated code, never committed: the `longrun` package inside the client
# distribution, and the example's `convert` package at the repo root.
GENERATED := $(CLIENT)/longrun/v1/jobs_pb2.py
EXAMPLE_GENERATED := convert/v1/convert_pb2.py
DEPS := $(VENV)/.deps
STAMP := $(VENV)/.installed
# What an installed checkout must be able to import and run; `make install`
# checks it every time and reinstalls when it fails (self-repairing).
SELF_CHECK := import longrun_client.cli, longrun.v1.jobs_pb2_grpc, longrun_server.app, longrun_worker.runtime

.PHONY: help install proto wheels run run-emulators emulators-start emulators-stop test test-unit test-contract test-integration test-acceptance lint typecheck bench chaos clean docker container-smoke

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(DEPS): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(DEPS)

$(GENERATED): $(shell find protos -name '*.proto') $(CLIENT)/protogen.py $(DEPS)
	cd protos && ../$(PY) ../$(CLIENT)/protogen.py --link-dir ../$(BUILD)/protos --out ../$(CLIENT) --proto-root . $$(find . -name '*.proto' | sed 's|^\./||')

$(EXAMPLE_GENERATED): $(shell find examples/protos -name '*.proto') $(GENERATED)
	$(PROTOGEN) --out . --proto-root examples/protos --proto-root protos $$(cd examples/protos && find . -name '*.proto' | sed 's|^\./||')

# Generated code first, then the editable installs: the client's folder goes on
# sys.path as a whole (editable_mode=compat), so code generated later is found too.
$(STAMP): $(DEPS) $(GENERATED) pyproject.toml $(CLIENT)/pyproject.toml $(CLIENT)/setup.py
	$(PY) -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e ./$(CLIENT)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) proto ## create .venv with pinned packages, generate the proto code, install longrun editable
	@$(PY) -c '$(SELF_CHECK)' 2>/dev/null && $(VENV)/bin/longrun --help >/dev/null || \
		{ echo "install is broken: reinstalling"; rm -f $(STAMP); $(MAKE) --no-print-directory $(STAMP); \
		  $(PY) -c '$(SELF_CHECK)' && $(VENV)/bin/longrun --help >/dev/null; }

proto: $(GENERATED) $(EXAMPLE_GENERATED) ## generate Python code from protos/ (never edit the output)

wheels: install ## build the longrun-client and longrun wheels into dist/
	rm -rf dist
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist ./$(CLIENT) .
	@ls dist

run: install ## server + 2 workers on the embedded default (or LONGRUN_STORE/LONGRUN_QUEUE)
	$(PY) -m longrun_server.dev

emulators-start: install ## start both emulators in the background (prints the exports)
	$(PY) -m scripts.emulators start

emulators-stop: ## stop the emulators started by emulators-start
	$(PY) -m scripts.emulators stop

run-emulators: install ## server + 2 workers on the Firestore and Pub/Sub emulators
	$(PY) -m scripts.emulators run -- $(PY) -m longrun_server.dev --store firestore --queue pubsub

# `make test` also needs LibreOffice headless for the docx_to_pdf example
# (Debian: apt-get install -y libreoffice-writer-nogui; .ci/run installs it).
test: install ## lint, typecheck, then every test suite (emulators started and stopped here)
	$(MAKE) lint typecheck
	$(PY) -m scripts.emulators run -- $(PY) -m pytest

test-unit: install ## unit tests only
	$(PY) -m pytest tests/unit

test-contract: install ## store and queue contract suites (starts the emulators)
	$(PY) -m scripts.emulators run -- $(PY) -m pytest tests/contract

test-integration: install ## integration tests (starts the emulators)
	$(PY) -m scripts.emulators run -- $(PY) -m pytest tests/integration

test-acceptance: install ## acceptance tests against real processes (starts the emulators)
	$(PY) -m scripts.emulators run -- $(PY) -m pytest tests/acceptance

lint: install ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install ## mypy
	$(VENV)/bin/mypy

bench: install ## benchmarks with baselines (not part of make test; needs redis-server and h2load)
	@command -v redis-server >/dev/null && command -v h2load >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq redis-server nghttp2-client) || \
		echo "install redis-server and nghttp2-client for the Celery and h2load baselines"
	$(PY) -m pip install -q -r bench/requirements.txt
	$(PY) -m bench

chaos: install ## bounded fault run: kill workers and the server while jobs flow
	PYTHONPATH=. $(PY) -m scripts.emulators run -- $(PY) -m bench.chaos

docker: ## build the image (needs a Docker engine)
	docker build -t longrun .

container-smoke: ## build the image and smoke-test it (as root: installs docker.io/debootstrap, starts dockerd if needed)
	bash scripts/container_smoke.sh

clean:
	rm -rf $(BUILD) dist $(VENV) .mypy_cache .pytest_cache .ruff_cache
	find $(CLIENT)/longrun convert -name '*_pb2*.py*' -delete 2>/dev/null || true
