# net-exporter — see README.md.
CARGO ?= cargo
ARGS ?=

.PHONY: all deps build release run test lint unit integration fuzz bench soak outage fmt clean bpf bpf-check manifests image image-or-skip

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

## The container image (Containerfile) with podman, offline from a locally made base
## (scripts/image.sh); IMAGE=net-exporter:dev.
image: release
	@scripts/image.sh

image-or-skip: release
	@scripts/image.sh --or-skip

## Everything CI checks: lint, the committed BPF objects, unit tests on fixtures, integration
## tests on real namespaces and in the container image.
test: deps lint bpf-check manifests image-or-skip
	$(CARGO) test --all-targets -- --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --test golden

integration: deps
	$(CARGO) test --test integration -- --test-threads=1

## Every parser under property-based fuzzing, long (tests/fuzz.rs; `make test` runs it with 256
## cases per property): optimized, with overflow checks and debug assertions kept on so that a
## wrapped integer is found, not hidden. FUZZ_CASES=n to go longer still.
FUZZ_CASES ?= 100000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
	CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true $(CARGO) test --release --test fuzz

bench: deps release
	$(CARGO) bench --bench collection
	$(CARGO) bench --bench drops
	$(CARGO) bench --bench peers
	$(CARGO) bench --bench dns
	$(CARGO) bench --bench exposition

## 100 namespaces with traffic for 10 minutes, scraped every second: RSS and CPU over time.
soak: deps release
	scripts/soak.sh

## The OTLP and Loki endpoints down for five minutes, then a black hole for five, then back
## (integration/outage.rs; `make test` runs the same test with 25 s phases).
OUTAGE_SECS ?= 300
outage: deps
	NETEXPORTER_OUTAGE_SECS=$(OUTAGE_SECS) $(CARGO) test --test integration outage:: -- --nocapture

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# The BPF objects are committed (see build.rs); these rebuild and verify them with Debian's clang.
# Each program's C sits beside the Rust that loads it (src/**/NAME.bpf.c); bpf/ holds vmlinux.h
# and the objects. The hash covers every *.bpf.c and *.h, in the order build.rs reads them.
BPF_PROGRAMS = $(shell find src -name '*.bpf.c' | LC_ALL=C sort)
BPF_SOURCES = $(shell find bpf src -name '*.bpf.c' -o -name '*.h' | LC_ALL=C sort)
# The prefix map keeps the checkout path out of the object, so any clone builds the same bytes.
BPF_CFLAGS = -O2 -g -target bpf -D__TARGET_ARCH_x86 -Ibpf -I/usr/include/$(shell uname -m)-linux-gnu -fdebug-prefix-map=$(CURDIR)=.
BPF_OUT ?= bpf

## Rebuild bpf/*.bpf.o and bpf/sources.sha256 from the sources.
bpf: deps
	@for c in $(BPF_PROGRAMS); do \
	  o=$(BPF_OUT)/$$(basename $$c .c).o; \
	  clang $(BPF_CFLAGS) -c $$c -o $$o && llvm-strip -g $$o || exit 1; \
	done
	@cat $(BPF_SOURCES) | sha256sum | cut -d' ' -f1 > $(BPF_OUT)/sources.sha256
	@echo "bpf objects written to $(BPF_OUT)/"

## The committed objects and hash are exactly what the sources compile to.
bpf-check: deps
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(MAKE) --no-print-directory bpf BPF_OUT=$$tmp >/dev/null && \
	for c in $(BPF_PROGRAMS); do \
	  f=$$(basename $$c .c).o; \
	  cmp -s $$tmp/$$f bpf/$$f || { echo "bpf/$$f is not what $$c compiles to: run make bpf"; exit 1; }; \
	done && cmp -s $$tmp/sources.sha256 bpf/sources.sha256 || { echo "bpf/sources.sha256 is stale: run make bpf"; exit 1; }; \
	echo "bpf objects match their sources"

## deploy/ renders with kubectl kustomize and passes schema, policy and flag checks (offline).
manifests: deps
	@scripts/check-manifests.sh
