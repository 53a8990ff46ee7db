# warpnet build, test and benchmark entry points. `make help` lists them.
# bash with pipefail: a failing command must fail its target even when its
# output is filtered through a pipe.
SHELL        := /bin/bash
.SHELLFLAGS  := -o pipefail -c
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/warpnet/warpnet/internal/buildinfo.Version=$(VERSION)
# Binary name -> main package.
BINARIES := warp-ipam=./ipam warp-veth=./plugins/veth warp-sriov=./plugins/sriov warpctl=./cmd/warpctl warpd=./daemon/warpd
# The plugins again, built with crash points (internal/faultpoint) for the
# crash tests; never installed.
FAULTPOINT_BINARIES := warp-ipam=./ipam warp-veth=./plugins/veth warp-sriov=./plugins/sriov

# CI (CI=true) must never skip a root-only test: turn skips into failures.
ifeq ($(CI),true)
export WARP_E2E_REQUIRED := 1
endif

.PHONY: help deps generate build demo test bench lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## apt-install what building, testing and the demo need (as root)
	@bash hack/install-deps.sh

generate: ## regenerate BPF objects and Go bindings (go tool bpf2go, clang; headers from bpf/include only); deterministic, committed
	$(GO) generate ./bpf/...

build: ## build every binary into bin/
	@mkdir -p $(BIN)
	@set -e; for b in $(BINARIES); do \
		name=$${b%%=*}; pkg=$${b#*=}; \
		echo "build: $(BIN)/$$name"; \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/$$name $$pkg; \
	done
	@mkdir -p $(BIN)/faultpoints
	@set -e; for b in $(FAULTPOINT_BINARIES); do \
		name=$${b%%=*}; pkg=$${b#*=}; \
		echo "build: $(BIN)/faultpoints/$$name (crash points, tests only)"; \
		CGO_ENABLED=0 $(GO) build -tags faultpoints -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/faultpoints/$$name $$pkg; \
	done

demo: deps build ## two-node simulated cluster: warpd, veth and SR-IOV pods behind ClusterIPs; prints a report, tears down
	@$(GO) test -count=1 -v -run '^TestDemo$$' ./tests/demo/ | grep -v -e '^=== RUN' -e '^--- PASS' -e '^PASS$$' -e '^ok '

test: deps build ## unit + e2e tests (e2e needs root; CI=true turns skips into failures)
	$(GO) test -count=1 -timeout 30m ./...

bench: deps build ## benchmarks side by side with the peers; writes their results into docs/benchmarks.md
	WARP_BENCH_DOC=1 $(GO) test -run "^$$" -bench . -benchtime 1x -timeout 60m ./tests/bench/

lint: ## gofmt and go vet
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean: ## remove build output
	rm -rf $(BIN)

.PHONY: apiserver
apiserver: ## build the real kube-apiserver for e2e tests into a cache (once, ~4 min; tests do it when missing)
	@bash hack/build-apiserver.sh
