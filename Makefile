# net-exporter — see README.md.
CARGO ?= cargo
ARGS ?=

.PHONY: all deps build release run test lint unit integration bench fmt clean

all: build

deps:
	@scripts/install-deps.sh

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## Build and start the agent on this machine (standalone: the host and every network namespace).
run: release
	./target/release/net-exporter $(ARGS)

## Everything CI checks: lint, unit tests on fixtures, integration tests on real namespaces.
test: deps lint
	$(CARGO) test --all-targets -- --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --test golden

integration: deps
	$(CARGO) test --test integration -- --test-threads=1

bench: deps release
	$(CARGO) bench --bench collection

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
