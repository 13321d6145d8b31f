# The two commands of the README: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NEXT := Next: source $(VENV)/bin/activate   (puts geomopt on the PATH; then: geomopt --help)

.PHONY: demo test install bench clean ledger docs

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,convex,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/geomopt reproduce path-sgd --quick --out runs
	$(VENV)/bin/geomopt report runs --out runs/report
	@echo "Report: runs/report/index.html"
	@echo "$(NEXT)"

test: $(STAMP)
	$(PY) -m pytest
	$(VENV)/bin/geomopt results check results
	@echo "$(NEXT)"

# The documentation site (mkdocs, strict: a warning fails the build) into site/.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site
	@echo "Docs: site/index.html"

# The results ledger: every reproduction at one protocol tier (TIER=quick|mid|full), resumable (rerun the same
# command after an interruption: finished runs are kept), then filed into results/ with its provenance.
TIER ?= mid
LEDGER_RUNS ?= runs-ledger
ledger: $(STAMP)
	-OMP_NUM_THREADS=1 $(VENV)/bin/geomopt reproduce all --tier $(TIER) --out $(LEDGER_RUNS)/$(TIER) --jobs 1
	$(VENV)/bin/geomopt results add $(LEDGER_RUNS)/$(TIER)

# Peers (nngeometry, curvlinops, backpack) declare torchvision, which would replace the CPU torch
# with a CUDA build: they are installed without dependencies (none of the code we call imports it).
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps -r benchmarks/requirements-peers.txt
	$(PY) benchmarks/bench_path_sgd.py
	$(PY) benchmarks/bench_rnn.py
	$(PY) benchmarks/bench_kfac.py
	$(PY) benchmarks/bench_distributed.py
	$(PY) benchmarks/bench_distributed.py --paper
	$(PY) benchmarks/bench_measures.py
	$(PY) benchmarks/bench_implicit.py
	$(PY) benchmarks/bench_prune.py
	$(PY) benchmarks/bench_sweep.py
	$(PY) benchmarks/bench_curvature.py
	$(PY) benchmarks/bench_heavyball.py
	$(PY) benchmarks/bench_geometry.py

clean:
	rm -rf $(VENV) runs .pytest_cache site
