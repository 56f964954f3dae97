# Gatehouse. `make run` starts a whole Gatehouse on this machine (a local
# cluster behind a gateway, ready for kubectl); `make test` runs every test
# against the real test bed, building its tools first when missing.

GO          ?= go
BIN         := $(CURDIR)/bin
STATICCHECK := $(GO) tool -modfile=tools/lint/go.mod staticcheck
TEST_FLAGS  ?= -race -count=1 -timeout=30m
RUN_ADDR    ?= 127.0.0.1:8443
DIR         ?= .gatehouse/dev
TOOL_BINS   := etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kratos

.PHONY: all build run test tools lint bench clean

all: build

build:
	$(GO) build -o $(BIN)/gatehouse ./cmd/gatehouse

# make run's binary has an embedded Kafka broker for the audit pipeline
# (the devkafka build tag); the release binary (make build) links none.
run: tools
	$(GO) build -tags devkafka -o $(BIN)/gatehouse-dev ./cmd/gatehouse
	$(BIN)/gatehouse-dev dev --state-dir $(DIR) --addr $(RUN_ADDR)

# tools/build.sh rebuilds a tool set only when its pin (tools/SET/go.mod,
# go.sum) changes; with everything up to date it returns in a second.
tools:
	tools/build.sh

# Benchmarks also run once each (-benchtime=1x -short) so that they do not
# rot; their numbers mean nothing at one iteration.
test: tools
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -run='^$$' -bench=. -benchtime=1x -short -count=1 ./...

bench: tools
	$(GO) test -run='^$$' -bench=. -benchmem ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	$(GO) mod tidy -diff
	@for d in tools/*/; do (cd $$d && $(GO) mod verify >/dev/null) || exit 1; done

clean:
	rm -rf $(BIN)
