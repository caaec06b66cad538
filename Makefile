# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, fuses and scores pairs the project generates, writes demo/figure.png and demo/report/
#   make test   creates .venv, checks the import layers (lint-imports) and runs the test suite
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
# This machine carries these torch wheels locally; elsewhere pip fetches them. fuse never imports
# torchvision, but open_clip and ultralytics (extras) need it: pinned here to match torch.
TORCH    = torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench bench-speed clean

$(BIN)/fuse: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,all]'
	# an editable install skips data files: link the man pages where man(1) looks (beside bin/)
	mkdir -p $(VENV)/share/man/man1 && ln -sf $(CURDIR)/man/*.1 $(VENV)/share/man/man1/
	touch $(BIN)/fuse

venv: $(BIN)/fuse

demo: venv
	$(BIN)/python examples/demo.py demo

test: venv
	$(BIN)/lint-imports --no-cache  # the layers (pyproject.toml [tool.importlinter])
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# Every benchmark; writes benchmarks/results/report.md and report.png. Smoke run: make bench BENCH_ARGS=--quick
bench: venv
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# The speed tables only (scoring, classical fusion, networks on CPU, start-up), printed; nothing is written.
bench-speed: venv
	$(BIN)/python benchmarks/bench_metrics.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_fuse.py --methods mean,max,laplacian,gff $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_nets.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_startup.py $(BENCH_ARGS)

clean:
	rm -rf demo .pytest_cache
