# pillowtop — make run | make test | make bench | make plugins | make services
SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
WASM := $(TARGET_DIR)/wasm32-wasip2/release
PILLOWTOP := $(TARGET_DIR)/release/pillowtop
CONFIG := config/embedded.toml
# Plugin toolchains for Python and JavaScript, installed once and reused.
TOOLS ?= $(HOME)/.cache/pillowtop/tools
COMPONENTIZE_PY_VERSION := 0.25.1
COMPONENTIZE_JS_VERSION := 0.23.0
PY_STAMP := $(TOOLS)/py/.componentize-py-$(COMPONENTIZE_PY_VERSION)
JS_STAMP := $(TOOLS)/js/.componentize-js-$(COMPONENTIZE_JS_VERSION)
# The bench's Python reference pillow (host/examples/bench/reference_pillow.py).
CONFLUENT_KAFKA_VERSION := 2.16.2
PSYCOPG_VERSION := 3.3.9
BENCH_PY_STAMP := $(TOOLS)/bench-py/.reference-$(CONFLUENT_KAFKA_VERSION)-$(PSYCOPG_VERSION)
PY_PLUGIN := plugins/examples/python-case-search
JS_PLUGIN := plugins/examples/js-case-search
MAPPINGS := plugins/case-search/mappings.json
RUN_CASES ?= 20000

.PHONY: run run-full test bench plugins rust-plugins case-search-plugin build wasm-target services clean

## Build the Wasm target if missing (idempotent).
wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## Build every plugin to a component and copy it next to its manifest
## (copied only when changed, so a running host does not see a spurious change).
plugins: rust-plugins $(TARGET_DIR)/py-case-search/case_search_py.wasm $(TARGET_DIR)/js-case-search/case_search_js.wasm
	@cmp -s $(TARGET_DIR)/py-case-search/case_search_py.wasm $(PY_PLUGIN)/case_search_py.wasm || cp $(TARGET_DIR)/py-case-search/case_search_py.wasm $(PY_PLUGIN)/
	@cmp -s $(TARGET_DIR)/js-case-search/case_search_js.wasm $(JS_PLUGIN)/case_search_js.wasm || cp $(TARGET_DIR)/js-case-search/case_search_js.wasm $(JS_PLUGIN)/

# Build Rust plugin crates $(1) and copy each component ($(2): name:folder
# pairs) next to its manifest, only when it changed.
define build_rust_plugins
	$(CARGO) build --release --target wasm32-wasip2 $(addprefix -p ,$(1))
	@for pair in $(2); do \
	  src=$(WASM)/$${pair%%:*}.wasm; dst=$${pair#*:}/$${pair%%:*}.wasm; \
	  cmp -s $$src $$dst || cp $$src $$dst; \
	done
endef

rust-plugins: wasm-target
	$(call build_rust_plugins,case-search unknown-users messaging-sync ucr hostile tagger,case_search:plugins/case-search unknown_users:plugins/unknown-users messaging_sync:plugins/messaging-sync ucr:plugins/ucr hostile:plugins/testing/hostile tagger:plugins/testing/tagger)

## Only the plugin the embedded `make run` job loads.
case-search-plugin: wasm-target
	$(call build_rust_plugins,case-search,case_search:plugins/case-search)

$(PY_STAMP):
	python3 -m venv $(TOOLS)/py
	$(TOOLS)/py/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)
	touch $@

$(BENCH_PY_STAMP):
	python3 -m venv $(TOOLS)/bench-py
	$(TOOLS)/bench-py/bin/pip install --quiet --disable-pip-version-check confluent-kafka==$(CONFLUENT_KAFKA_VERSION) 'psycopg[binary]==$(PSYCOPG_VERSION)'
	touch $@

$(JS_STAMP):
	command -v npm >/dev/null || { echo "npm is missing: install Node.js 20+ (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	mkdir -p $(TOOLS)/js
	cd $(TOOLS)/js && { [ -f package.json ] || npm init -y >/dev/null; } \
	  && npm install --no-audit --no-fund --loglevel=error @bytecodealliance/componentize-js@$(COMPONENTIZE_JS_VERSION)
	touch $@

# Each example builds in a scratch dir with its generated mappings module, so
# the index mappings are the Rust plugin's, byte for byte.
$(TARGET_DIR)/py-case-search/case_search_py.wasm: $(PY_PLUGIN)/app.py $(PY_PLUGIN)/case_search.py $(MAPPINGS) wit/processor.wit $(PY_STAMP)
	rm -rf $(TARGET_DIR)/py-case-search && mkdir -p $(TARGET_DIR)/py-case-search
	cp $(PY_PLUGIN)/app.py $(PY_PLUGIN)/case_search.py $(TARGET_DIR)/py-case-search/
	python3 -c 'import sys; print("MAPPINGS = " + repr(open(sys.argv[1]).read()))' $(MAPPINGS) > $(TARGET_DIR)/py-case-search/mappings.py
	cd $(TARGET_DIR)/py-case-search && $(TOOLS)/py/bin/componentize-py -d $(CURDIR)/wit -w processor componentize app -o case_search_py.wasm

$(TARGET_DIR)/js-case-search/case_search_js.wasm: $(JS_PLUGIN)/app.js $(MAPPINGS) wit/processor.wit $(JS_STAMP)
	rm -rf $(TARGET_DIR)/js-case-search && mkdir -p $(TARGET_DIR)/js-case-search
	cp $(JS_PLUGIN)/app.js $(TARGET_DIR)/js-case-search/
	python3 -c 'import json, sys; print("export const MAPPINGS = " + json.dumps(open(sys.argv[1]).read()) + ";")' $(MAPPINGS) > $(TARGET_DIR)/js-case-search/mappings.js
	cd $(TARGET_DIR)/js-case-search && $(TOOLS)/js/node_modules/.bin/componentize-js app.js --wit $(CURDIR)/wit --world-name processor -d http fetch-event -o case_search_js.wasm

build:
	$(CARGO) build --release -p pillowtop

## The main job on the embedded default: fresh sample data, run until caught up, summary.
run: case-search-plugin build
	@mkdir -p data
	@rm -f data/feed.db* data/store.db*
	$(PILLOWTOP) --config $(CONFIG) gen --kind case --count $(RUN_CASES) --seed 42 \
	  | $(PILLOWTOP) --config $(CONFIG) publish --topic case-sql --partitions 4
	$(PILLOWTOP) --config $(CONFIG) --log warn run --until-caught-up
	$(PILLOWTOP) --config $(CONFIG) --log warn status

## Install (cached) and start the real servers tests use: a Kafka-protocol
## broker (tansu), PostgreSQL, an Elasticsearch-API server. Idempotent.
services:
	TOOLS=$(TOOLS) bash scripts/services.sh

## The full stack (config/full-stack.toml): CommCare's case and form pillows,
## two processes each, over Kafka, PostgreSQL and Elasticsearch, on a sample
## of FULL_SUBMISSIONS (10000) forms and their cases; keeps running until Ctrl-C.
run-full: services plugins build
	PILLOWTOP=$(PILLOWTOP) bash scripts/run-full.sh

## Everything: unit tests, plugin tests, integration tests against real components and servers.
test: plugins services
	PILLOWTOP_TOOLS=$(TOOLS) $(CARGO) test --workspace --release

## Benchmarks; results go to docs/BENCHMARKS.md by hand with the command used.
bench: plugins build $(BENCH_PY_STAMP)
	PILLOWTOP_BENCH_PYTHON=$(TOOLS)/bench-py/bin/python $(CARGO) run --release -p pillowtop --example bench

clean:
	rm -rf data
