# pillowtop — make run | make test | make bench | make plugins
SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
WASM := $(TARGET_DIR)/wasm32-wasip2/release
PILLOWTOP := $(TARGET_DIR)/release/pillowtop
CONFIG := config/embedded.toml
RUN_CASES ?= 20000

.PHONY: run test bench plugins build wasm-target clean

## Build the Wasm target if missing (idempotent).
wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## Build every plugin to a component and copy it next to its manifest
## (copied only when changed, so a running host does not see a spurious change).
plugins: wasm-target
	$(CARGO) build --release --target wasm32-wasip2 -p case-search -p hostile -p tagger
	@for pair in case_search:plugins/case-search hostile:plugins/testing/hostile tagger:plugins/testing/tagger; do \
	  src=$(WASM)/$${pair%%:*}.wasm; dst=$${pair#*:}/$${pair%%:*}.wasm; \
	  cmp -s $$src $$dst || cp $$src $$dst; \
	done

build:
	$(CARGO) build --release -p pillowtop

## The main job on the embedded default: fresh sample data, run until caught up, summary.
run: plugins build
	@mkdir -p data
	@rm -f data/feed.db* data/store.db*
	$(PILLOWTOP) --config $(CONFIG) gen --kind case --count $(RUN_CASES) --seed 42 \
	  | $(PILLOWTOP) --config $(CONFIG) publish --topic case-sql --partitions 4
	$(PILLOWTOP) --config $(CONFIG) --log warn run --until-caught-up
	$(PILLOWTOP) --config $(CONFIG) --log warn status

## Everything: unit tests, plugin tests, integration tests against real components.
test: plugins
	$(CARGO) test --workspace --release

## Benchmarks; results go to docs/BENCHMARKS.md by hand with the command used.
bench: plugins build
	$(CARGO) run --release -p pillowtop --example bench

clean:
	rm -rf data
