# Build, generate, test and release the Proxmox VE + Talos infrastructure provider.
# Everything runs offline: envtest assets and lab binaries are built from the Go module
# proxy once and cached under $(CACHE_ROOT).

SHELL := /usr/bin/env bash -o pipefail
.DEFAULT_GOAL := help

CACHE_ROOT ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cluster-api-provider-proxmox-talos
export CACHE_ROOT

VERSION ?= v0.1.0
OUT_DIR ?= out
BIN_DIR ?= bin
CONTROLLER_GEN := go tool controller-gen
# RBAC comes from kubebuilder markers in the manager and its controllers.
RBAC_PATHS := paths=./ $(foreach d,controllers internal,$(if $(wildcard $(d)),paths=./$(d)/...))
KUBECTL ?= kubectl
# go test's default of 10 minutes per package is close to the chaos CI run (about 7 minutes
# on a loaded 2-core machine); a stuck test still ends well inside CI's 90 minutes.
GO_TEST_FLAGS ?= -timeout 25m

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-20s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: ## Generate CRDs, RBAC (from kubebuilder markers) and webhook configurations.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager-role $(RBAC_PATHS) output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) webhook paths=./internal/webhooks/... output:webhook:artifacts:config=config/webhook

.PHONY: verify-gen
verify-gen: generate manifests ## Fail if generated files are not up to date.
	@git diff --exit-code -- api config || { echo "generated files are stale: run 'make generate manifests' and commit"; exit 1; }

.PHONY: lint
lint: ## go vet, gofmt and actionlint (GitHub workflows).
	go vet ./...
	go tool actionlint -shellcheck= -pyflakes= .github/workflows/*.yml
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: build
build: ## Build the manager and the simulators into bin/.
	go build -o $(BIN_DIR)/manager .
	go build -o $(BIN_DIR)/pvesim ./cmd/pvesim
	go build -o $(BIN_DIR)/factorysim ./cmd/factorysim

##@ Testing

.PHONY: envtest-assets
envtest-assets: ## Build (once, cached) kube-apiserver and etcd for envtest.
	@hack/envtest-assets.sh

.PHONY: lab-binaries
lab-binaries: ## Build (once, cached) the CAPI core manager, clusterctl, CABPT and CACPPT.
	@hack/lab-binaries.sh >/dev/null

.PHONY: autoscaler-contract
autoscaler-contract: ## Build (once, cached) the cluster autoscaler's Cluster API provider tests with our contract test (test/autoscaler runs them).
	@hack/autoscaler-contract.sh >/dev/null

# `KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)" go test` would go on when the script fails
# (a failed command substitution inside an assignment does not stop the command); assign first
# and stop on failure, so the suite never runs (and skips) without assets.
.PHONY: test
test: verify-gen lint lab-binaries autoscaler-contract ## Run every test against a real kube-apiserver (builds envtest assets and clusterctl once).
	@assets=$$(hack/envtest-assets.sh) || { echo "make test: hack/envtest-assets.sh failed: no kube-apiserver/etcd, the envtest suites cannot run"; exit 1; }; \
	  echo "KUBEBUILDER_ASSETS=$$assets go test $(GO_TEST_FLAGS) ./..."; \
	  KUBEBUILDER_ASSETS="$$assets" go test $(GO_TEST_FLAGS) ./...

FUZZTIME ?= 10s
.PHONY: fuzz
fuzz: ## Fuzz every target (webhooks, network/META renderers, ISO, Proxmox decoders, pvesim parsing) for FUZZTIME each (default 10s).
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: bench
bench: ## Run the benchmarks (Proxmox calls per VM and more).
	go test -run '^$$' -bench . -benchmem ./...

# Scale and cost benchmark (docs/performance.md). N machines over C clusters; PROFILE is
# pvesim's profile (realistic for call counts, fast for the overhead with latency ~0).
N ?= 10
C ?= 2
PROFILE ?= realistic
WINDOW ?= 2m
SYNC_PERIOD ?= 1m
BENCH_ARGS ?=
.PHONY: bench-scale
bench-scale: ## Run the scale benchmark: make bench-scale N=100 C=20 PROFILE=fast (report in out/bench/).
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/envtest-assets.sh)}" go run ./test/bench/scale \
		-n $(N) -c $(C) -profile $(PROFILE) -window $(WINDOW) -sync-period $(SYNC_PERIOD) -out $(OUT_DIR)/bench $(BENCH_ARGS)

.PHONY: bench-scale-ci
bench-scale-ci: ## CI: the scale benchmark at small N and the scale-out tests (leader failover, watch-filter and namespace shards); no timed assertions.
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/envtest-assets.sh)}" go test -count=1 -timeout 20m ./test/bench/scale/

# Chaos (docs/reliability.md): MACHINES over CLUSTERS created, scaled, upgraded and deleted
# while a schedule seeded by SEED injects Proxmox faults and at least KILLS manager SIGKILLs
# spread over DURATION. REPLICAS=2 runs two managers with leader election (kills hit the leader).
SEED ?= 1
MACHINES ?= 30
CLUSTERS ?= 5
DURATION ?= 10m
KILLS ?= 10
REPLICAS ?= 1
CHAOS_ARGS ?=
.PHONY: chaos
chaos: ## Run the chaos run: make chaos SEED=7 MACHINES=30 CLUSTERS=5 DURATION=10m KILLS=10 [REPLICAS=2] (result in out/chaos/).
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/envtest-assets.sh)}" go run ./test/chaos/cmd/chaos \
		-seed $(SEED) -machines $(MACHINES) -clusters $(CLUSTERS) -duration $(DURATION) -kills $(KILLS) -replicas $(REPLICAS) -out $(OUT_DIR)/chaos $(CHAOS_ARGS)

.PHONY: chaos-ci
chaos-ci: ## CI's short chaos run (fixed seed, 8 machines, 3 kills; also part of make test): no duplicate, no leak, no secret.
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(hack/envtest-assets.sh)}" go test -count=1 -timeout 20m -v -run TestChaosCI ./test/chaos/

##@ Templates and add-ons

.PHONY: templates
templates: ## Assemble templates/ flavors from templates/src and addons/ fragments.
	hack/gen-templates.sh

CLUSTER_NAME ?=
NAMESPACE ?= default
.PHONY: addons
addons: ## Render add-on ConfigMaps (Cilium, MetalLB, Flux) into out/addons/ (needs internet; CLUSTER_NAME=...).
	CLUSTER_NAME=$(CLUSTER_NAME) NAMESPACE=$(NAMESPACE) hack/render-addons.sh

##@ Release

IMAGE_REPOSITORY ?= ghcr.io/proxmox-talos/cluster-api-provider-proxmox-talos
IMAGE_PLATFORMS ?= linux/amd64,linux/arm64
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

.PHONY: release
release: ## Write out/ for clusterctl: infrastructure-components.yaml (image pinned to VERSION), metadata.yaml, flavors, ClusterClass, optional CRD (VERSION=vX.Y.Z).
	go run ./hack/release assets --version $(VERSION) --image-repository $(IMAGE_REPOSITORY) --out $(OUT_DIR)

.PHONY: release-manifests
release-manifests: release ## Alias of release.

.PHONY: image
image: ## Build the manager image without a Docker engine: multi-arch OCI archive out/cluster-api-provider-proxmox-talos-VERSION.oci.tar (base: scratch + CA bundle).
	go run ./hack/release image --version $(VERSION) --image-repository $(IMAGE_REPOSITORY) --platforms $(IMAGE_PLATFORMS) --ca-bundle $(CA_BUNDLE) --out $(OUT_DIR)

.PHONY: docker-build
docker-build: ## Build the image with Docker from the Dockerfile (base: gcr.io/distroless/static:nonroot, as the release workflow).
	docker build --build-arg VERSION=$(VERSION) --build-arg GIT_COMMIT=$$(git rev-parse HEAD) -t $(IMAGE_REPOSITORY):$(VERSION) .

##@ Lab

.PHONY: demo
demo: ## Run the lab: create the seed's 3+2 Talos cluster on simulated Proxmox (DEMO_EXIT=1 to exit when Available, DEMO_TIMEOUT=10m).
	go run ./test/lab/cmd/demo

E2E_TIMEOUT ?= 50m
.PHONY: test-e2e
test-e2e: ## Run the e2e suite over the lab (3+2 cluster by hand and with clusterctl init/move/delete; pvesim empty and every process stopped).
	@hack/envtest-assets.sh >/dev/null
	@hack/lab-binaries.sh >/dev/null
	go test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -v ./test/e2e/...
