# The two commands of the README:
#   make benchmark   set everything up, run the quick local benchmark (afresh), print the report's path
#                    (make benchmark BENCHMARK_ARGS=--resume continues an interrupted one)
#   make test        set everything up, run the test suite
#   make bench       set everything up, run the performance benchmarks (bench/), print them as Markdown
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_OUT ?= bench/results/local.json
BENCH_ARGS ?=
BENCHMARK_ARGS ?= --fresh

.PHONY: setup test benchmark bench preview clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "installing mist-bench and its pins (torch, Ray, MLflow, ...): a few minutes the first time"
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmark: $(STAMP)
	$(BIN)/mist-bench benchmark --scale quick $(BENCHMARK_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS) --out $(BENCH_OUT)
	$(BIN)/python -m bench.table $(BENCH_OUT)

preview: $(STAMP)
	$(BIN)/mist-bench preview mnist_hard --out previews/mnist_hard.png

clean:
	rm -rf $(VENV) .pytest_cache
