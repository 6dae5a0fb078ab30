# sidekey — see README.md. `make demo` runs the local end-to-end demo, `make test` every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(PATH):/usr/local/go/bin:$(shell go env GOPATH 2>/dev/null)/bin

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/sidekey/sidekey/internal/version.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'
TESTFLAGS ?=
FUZZTIME ?= 10s

.PHONY: all build images images-detect images-push deps testbin test test-unit demo generate check-generate lint fmt bench bench-e2e bench-detect bench-probe bench-agent vmlinux fuzz helm-lint clean

all: build

## build: the sidekey and sidekey-agent binaries, static, into bin/
build:
	$(GOBUILD) -o bin/sidekey ./cmd/sidekey
	$(GOBUILD) -o bin/sidekey-agent ./cmd/sidekey-agent

## images: OCI images of sidekey and sidekey-agent, without a Docker daemon, into out/images/
images:
	go run ./hack/images -version $(VERSION) -out out/images

## images-detect: dogfood: sidekey detect on both images (exit 1 on a finding); TestImages does the same in `make test`
images-detect: images build
	bin/sidekey detect image docker-archive:out/images/sidekey.tar
	bin/sidekey detect image docker-archive:out/images/sidekey-agent.tar

## images-push: push the images with crane (REGISTRY=ghcr.io/you)
images-push: images
	crane push out/images/sidekey.tar $(REGISTRY)/sidekey:$(VERSION)
	crane push out/images/sidekey-agent.tar $(REGISTRY)/sidekey-agent:$(VERSION)

## deps: Debian packages the tests need (clang, bpftool, containerd, ...), when missing
deps:
	hack/deps.sh

## testbin: build and cache the real test servers (kube-apiserver, etcd, kubelet, vault, helm, gitleaks)
testbin:
	hack/testbin.sh all

## test: install what is missing, build the test servers, run every test (real servers, real BPF)
test: deps testbin
	go test -count=1 -timeout 45m $(TESTFLAGS) ./...

## test-unit: the tests, without installing or building anything first
test-unit:
	go test -count=1 $(TESTFLAGS) ./...

## demo: sidekey end to end on a real single-node cluster on this machine (root; installs and builds what it needs)
demo:
	hack/demo.sh

## bench-e2e: pod-start latency with and without sidekey injection, on the real node (root)
bench-e2e: deps testbin
	go test ./test/e2e -run '^$$' -bench PodStart -benchtime 10x

## generate: regenerate generated code (bpf2go objects, reference docs)
generate: deps
	go generate ./...

## check-generate: fail if committed generated files are stale
check-generate: generate
	git diff --exit-code -- . || { echo "generated files are stale: run make generate and commit" >&2; exit 1; }

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...

## fmt: format the Go code
fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '_bpfe[lb].go$$')

## bench: the Go benchmarks (mutation, webhook, scanning, ...)
bench: deps testbin
	go test -run '^$$' -bench . -benchmem -count 1 ./...

## bench-detect: sidekey detect on a large image beside gitleaks dir on its flattened filesystem, same run
bench-detect: testbin build
	hack/bench-detect.sh

## bench-agent: sidekey-agent beside vault agent: binary size, start to files written, RSS after 10 refreshes (root)
bench-agent: testbin build
	hack/bench-agent.sh

## bench-probe: the probe's overhead (root): detached / empty-program floor / attached, and the drop check
bench-probe:
	hack/bench-probe.sh

## vmlinux: refresh bpf/vmlinux.h from this kernel's BTF (deliberately; not part of generate)
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/vmlinux.h

## fuzz: every fuzz target for FUZZTIME each
fuzz:
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

## helm-lint: lint the chart
helm-lint: testbin
	"$$(hack/testbin.sh --dir helm)/helm" lint charts/sidekey

## clean: remove build output (the test-server cache stays; it lives outside the repo)
clean:
	rm -rf bin out
