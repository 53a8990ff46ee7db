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
# loopback is the reference plugin (containernetworking/plugins, pinned in
# go.mod): the image ships it for nodes that have none.
BINARIES := warp-ipam=./ipam warp-veth=./plugins/veth warp-sriov=./plugins/sriov warpctl=./cmd/warpctl warpd=./daemon/warpd \
	warp-install=./cmd/warp-install loopback=github.com/containernetworking/plugins/plugins/main/loopback
# The warpnet image (make image): repository and tag.
IMAGE_REPO ?= localhost/warpnet
IMAGE_TAG  ?= $(VERSION)
# The plugins again, built with crash points (internal/faultpoint) for the
# crash tests; never installed.
FAULTPOINT_BINARIES := warp-ipam=./ipam warp-veth=./plugins/veth warp-sriov=./plugins/sriov

# CI (CI=true) must never skip a root-only test: turn skips into failures.
ifeq ($(CI),true)
export WARP_E2E_REQUIRED := 1
endif

.PHONY: help deps generate build demo test bench lint clean image kube helm multus coredns manifests cluster cluster-down

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

test: deps build kube helm multus coredns ## unit + e2e tests (e2e needs root; CI=true turns skips into failures)
	$(GO) test -count=1 -timeout 40m ./...

image: build ## the warpnet OCI image (no docker): bin/warpnet-image.tar, for ctr -n k8s.io images import
	$(GO) run ./install/mkimage --bin $(BIN) --repository $(IMAGE_REPO) --tag $(IMAGE_TAG) --out $(BIN)/warpnet-image.tar

kube: ## build the Kubernetes binaries the tests run (kubelet, apiserver, ...) into a cache, once (~12 min cold on 2 cores)
	@bash hack/build-kube.sh

helm: ## build helm into the same cache, once (~3 min)
	@bash hack/build-helm.sh

multus: ## build Multus's thin plugin and its installer into the same cache, once (the cluster test's Multus case)
	@bash hack/build-multus.sh

coredns: ## build CoreDNS into the same cache, once (the cluster test's DNS)
	@bash hack/build-coredns.sh

manifests: ## re-render install/manifests/ from the chart (committed; a test checks they are up to date)
	@bash hack/render-manifests.sh

cluster: deps build kube helm image ## a real 2-node Kubernetes cluster with warpnet, on this machine (no docker); prints how to use it
	@$(GO) run ./tests/k8s/cmd/warp-cluster up --image $(BIN)/warpnet-image.tar --image-name $(IMAGE_REPO):$(IMAGE_TAG)

cluster-down: ## stop and remove the cluster of make cluster
	@$(GO) run ./tests/k8s/cmd/warp-cluster down

bench: deps build ## benchmarks side by side with the peers; writes their results into docs/benchmarks.md
	WARP_BENCH_DOC=1 $(GO) test -run "^$$" -bench . -benchtime 1x -timeout 90m ./tests/bench/

lint: ## gofmt and go vet
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean: ## remove build output
	rm -rf $(BIN)

.PHONY: apiserver
apiserver: ## build the real kube-apiserver for e2e tests into a cache (once, ~4 min; tests do it when missing)
	@bash hack/build-kube.sh kube-apiserver
