# ferry — one Makefile. `make run` is the main demo, `make test` is what CI runs.
GO        ?= go
BIN       := bin/ferry
GOPATHBIN := $(shell $(GO) env GOPATH)/bin
STATICCHECK := $(shell command -v staticcheck 2>/dev/null || echo $(GOPATHBIN)/staticcheck)
TEST_TIMEOUT ?= 40m

.PHONY: all setup build run test check fmt vet lint unit fuzz bench-plan bench-migrate bench-checkpoint bench-cas bench-control bench-sim

all: build

setup:
	@scripts/setup.sh

build:
	$(GO) build -o $(BIN) ./cmd/ferry

# The main job: set up, build and run the demo.
run: setup build
	@scripts/demo.sh

# What CI runs: set up the machine, then every check.
test: setup check

check: fmt vet lint unit

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

lint:
	$(STATICCHECK) ./...

# One test binary at a time (-p 1): on 2 cores, packages that boot QEMU
# guests and run timing-sensitive end-to-end tests only slow each other down
# when run side by side; each package still runs its own tests in parallel.
unit:
	$(GO) test -race -p 1 -timeout $(TEST_TIMEOUT) ./...

# Short fuzzing of every parser (the seeds run in `make unit` already).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s -fuzzminimizetime 1000x $$pkg || exit 1; \
	  done; \
	done

bench-plan:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./plan/...

# Guest boot, suspend, resume and one live migration (driver/qemu, 128 MiB).
bench-vm: setup
	$(GO) test -run '^$$' -bench Guest -benchtime 1x -timeout 30m ./driver/qemu/...

bench-migrate: setup
	$(GO) test -run '^$$' -bench Migrate -benchtime 1x -timeout 60m ./agent/...

bench-checkpoint: setup
	$(GO) test -run '^$$' -bench Checkpoint -benchtime 1x -timeout 60m ./driver/process/...

bench-cas:
	$(GO) test -run '^$$' -bench . -timeout 60m ./cas/...

bench-control:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./controller/...

bench-sim:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./sim/...
