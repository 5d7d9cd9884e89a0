# longrun: the one entry point. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUILD := build
PROTO_SRC := $(shell find protos examples -name '*.proto' 2>/dev/null)
GOOGLE_PROTOS = $(shell $(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')
GRPC_PROTOS = $(shell $(PY) -c 'import grpc_tools, os; print(os.path.join(grpc_tools.__path__[0], "_proto"))')
STAMP := $(VENV)/.installed

.PHONY: help install proto run run-emulators emulators-start emulators-stop test test-unit test-contract test-acceptance lint typecheck bench chaos clean docker

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) proto ## create .venv with pinned packages and generate the proto code

# The compiled google.longrunning module registers "google/longrunning/operations.proto",
# but the package ships the source as operations_proto.proto: link it under the runtime name.
proto: $(STAMP) ## generate Python code from protos/ (never edit the output)
	@mkdir -p $(BUILD)/protos/google/longrunning
	@ln -sf $(GOOGLE_PROTOS)/google/longrunning/operations_proto.proto $(BUILD)/protos/google/longrunning/operations.proto
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos -Iexamples/protos -I$(BUILD)/protos -I$(GOOGLE_PROTOS) -I$(GRPC_PROTOS) \
		--python_out=. --grpc_python_out=. --mypy_out=quiet:. \
		$(shell find protos examples/protos -name '*.proto' 2>/dev/null | sed -e 's|^protos/||' -e 's|^examples/protos/||')

run: install ## server + 2 workers on the embedded default (or LONGRUN_STORE/LONGRUN_QUEUE)
	$(PY) -m server.dev

emulators-start: install ## start both emulators in the background (prints the exports)
	$(PY) -m scripts.emulators start

emulators-stop: ## stop the emulators started by emulators-start
	$(PY) -m scripts.emulators stop

run-emulators: install ## server + 2 workers on the Firestore and Pub/Sub emulators
	$(PY) -m scripts.emulators run -- $(PY) -m server.dev --store firestore --queue pubsub

test: install ## lint, typecheck, then every test suite (emulators started and stopped here)
	$(MAKE) lint typecheck
	$(PY) -m scripts.emulators run -- $(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

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

clean:
	rm -rf $(BUILD) $(VENV) .mypy_cache .pytest_cache .ruff_cache
	find longrun convert -name '*_pb2*.py*' -delete 2>/dev/null || true
