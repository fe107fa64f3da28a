# Chaperone — developer entry points. Every target installs what it needs first, idempotently.
#   make demo    run the main job on a local control plane
#   make test    lint, typecheck and the whole test suite (what CI runs), including the story on real pods
#   make images  the operator, sidecar and agent images, built without a registry into .images/
#   make bench   benchmarks against direct PostgreSQL and PgBouncer, ratios into bench/results.json
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

include tools.env

TOOLS_BIN := $(CURDIR)/.tools/bin
# Node 24 comes from the `node` dev dependency; tools come from .tools/bin.
export PATH := $(CURDIR)/node_modules/.bin:$(TOOLS_BIN):$(PATH)
export CHAPERONE_TOOLS_BIN := $(TOOLS_BIN)

NPM_STAMP := node_modules/.package-lock.json

.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: prerequisites
prerequisites:
	@command -v npm >/dev/null || { echo "make: 'npm' is not on PATH; install Node.js (any version with npm 10+; the repo brings Node 24 itself)" >&2; exit 1; }
	@command -v go >/dev/null || { echo "make: 'go' is not on PATH; install Go 1.26+ (tools are built from the Go module proxy)" >&2; exit 1; }

$(NPM_STAMP): package.json package-lock.json */package.json | prerequisites
	npm ci --no-audit --no-fund
	@touch $@

.PHONY: deps
deps: $(NPM_STAMP) ## Install npm dependencies (npm ci) when package-lock.json changed.

.PHONY: tools
tools: prerequisites ## Build kube-apiserver launcher, kubectl, opa and helm into the per-machine cache, link .tools/bin.
	@scripts/tools.sh

.PHONY: packages
packages: ## Install Debian packages the tests need (postgresql, pgbouncer) when missing.
	@scripts/debian-packages.sh

.PHONY: node
node: tools ## Everything the local node needs: containerd, runc, CNI plugins, iptables (Debian); kubelet, kube-scheduler, kube-proxy, CoreDNS (Go module proxy, cached).
	@scripts/debian-packages.sh node
	@scripts/tools.sh node

.PHONY: images
images: deps tools packages ## Build the operator, sidecar, agent (and the node's pause) images into .images/, reproducibly, without a registry.
	node images/build-images.ts

.PHONY: drivers
drivers: ## Install psycopg and the PostgreSQL JDBC driver (driver tests) into the per-machine cache, link .tools/drivers.
	@scripts/drivers.sh

.PHONY: generate
generate: deps ## Regenerate crds/ from the schemas in api/src and copy CRDs and admission policies into charts/chaperone.
	node api/scripts/generate-crds.ts

.PHONY: build
build: deps ## Typecheck and compile every package to dist/, and bundle the sidecar and the operator as their images run them (dist/*-bundle).
	tsc -p tsconfig.build.json
	node sidecar/scripts/build.ts
	node operator/scripts/build.ts

.PHONY: cli
cli: deps ## Build kubectl-chaperone as one executable for this machine into dist/cli (skipped when unchanged).
	node cli/scripts/build.ts

.PHONY: release
release: deps tools ## Release artefacts of VERSION=x.y.z (CLI, npm package, chart, image archives) into dist/release/VERSION (SIGNING_KEY=ed25519.pem signs them).
	@test -n "$(VERSION)" || { echo "make release needs VERSION=x.y.z (and a CHANGELOG.md entry for it)" >&2; exit 2; }
	node scripts/release.ts --version "$(VERSION)" $(if $(SIGNING_KEY),--signing-key "$(SIGNING_KEY)") $(if $(RELEASE_BASE_URL),--base-url "$(RELEASE_BASE_URL)")

.PHONY: lint
lint: deps ## eslint, prettier --check and the TypeScript typecheck.
	eslint .
	prettier --check .
	tsc -p tsconfig.json --noEmit
	@command -v gofmt >/dev/null && test -z "$$(gofmt -l e2e/controlplane e2e/coredns images/pause)" || { echo "gofmt: e2e/controlplane, e2e/coredns or images/pause needs formatting" >&2; exit 1; }

.PHONY: test
test: deps tools packages drivers node images lint ## Lint, then every test against a real control plane and PostgreSQL; the story on a local node.
	npm test --silent

.PHONY: demo
demo: deps tools packages node images ## Start a local control plane, node and PostgreSQL and walk through Chaperone on real pods.
	node e2e/demo.ts

.PHONY: bench
bench: deps tools packages ## Run the benchmarks; ratios to direct PostgreSQL and PgBouncer in bench/results.json.
	node bench/run.ts

.PHONY: clean
clean: ## Remove build output, .images and .tools (the per-machine tool cache is kept).
	rm -rf dist */dist .tools .images e2e/.run

.PHONY: clean-cache
clean-cache: ## Also remove this machine's tool cache (forces a full rebuild).
	rm -rf "$${CHAPERONE_TOOLS_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/chaperone}"
