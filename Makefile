PY ?= python3

.PHONY: help install dev lint typecheck test test-rust bench bench-quick clean

help:            ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:         ## build and install hotlimit (release build of the Rust core)
	$(PY) -m pip install .

dev:             ## editable install with test, bench and lint tools
	$(PY) -m pip install --no-build-isolation -e ".[dev,bench]"

lint:            ## ruff, rustfmt, clippy
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	cargo fmt --check && cargo clippy --all-targets --release -- -D warnings

typecheck:       ## mypy strict on the package
	$(PY) -m mypy

test:            ## Rust unit tests and the pytest suite
	cargo test --release
	$(PY) -m pytest

bench:           ## the full pytest-benchmark suite
	$(PY) -m pytest benchmarks --benchmark-only

bench-quick:     ## the comparison table in about 15 s
	$(PY) -m hotlimit bench --quick

clean:           ## remove build outputs
	cargo clean; rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .benchmarks
