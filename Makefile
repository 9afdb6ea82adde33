# diffnotes: build the book and run the tests.  On a fresh machine: `make book`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Environment of every notebook run (nbval, papermill, jupyter-book). Matplotlib stays headless: Agg for the
# unit tests; in a kernel the inline backend (Agg-based), since MPLBACKEND=Agg would override ipykernel's
# inline default and no figure would reach a notebook or the book.
export MPLBACKEND      := module://matplotlib_inline.backend_inline
export PYTHONHASHSEED  := 0
export OMP_NUM_THREADS := 2
# glibc's allocator keeps freed blocks up to 32 MiB instead of unmapping them (diffnotes/cli.py, MALLOC_ENV): without
# it a loop over large tensors spends much of its time in page faults
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 1073741824
export MALLOC_TOP_PAD_        := 67108864
# The venv's own "python3" kernelspec comes first, so every notebook runs in the venv.
export JUPYTER_PATH    := $(CURDIR)/$(VENV)/share/jupyter
export PATH            := $(CURDIR)/$(BIN):$(PATH)

.PHONY: venv book test test-lab lab bench mutation browser-deps serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned: here a local CPU wheel; a plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[book,test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	touch $@

book: $(STAMP)
	@# jupyter-cache keys on the notebook's code only: drop it whenever the package changes.
	@mkdir -p _build
	@hash=$$(find diffnotes -name '*.py' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); \
	if [ "$$hash" != "$$(cat _build/.pkg-hash 2>/dev/null)" ]; then \
		echo "diffnotes/ changed: clearing _build/.jupyter_cache"; \
		rm -rf _build/.jupyter_cache _build/results; \
		echo "$$hash" > _build/.pkg-hash; \
	fi
	@# --all: re-read every page (notebooks still come from the cache), else Sphinx skips an unchanged .md
	@# whose execution failed last time, or whose cache entry was just cleared, and publishes stale output.
	@# Pass 1 executes the notebooks (their verdict cells write _build/results/*.json); the results page is then
	@# generated from those records and pass 2 rebuilds the HTML from the cache (seconds).
	$(BIN)/python scripts/results_page.py
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	$(BIN)/python scripts/results_page.py
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "HTML: _build/html/index.html"

test: $(STAMP)
	@echo "== 1/6 unit tests"
	MPLBACKEND=Agg $(BIN)/python -m pytest tests -q -p no:cacheprovider --ignore=tests/test_sweep.py
	@echo "== 1b/6 python -m diffnotes sweep on Dask: a 2-worker LocalCluster, resume, a failing task, a real cluster"
	$(BIN)/python -m pytest tests/test_sweep.py -q -p no:cacheprovider
	@echo "== 2/6 sync: .md sources round-trip through jupytext; no tracked .ipynb"
	$(BIN)/python scripts/check_sync.py
	@echo "== 3/6 nbval: every notebook at smoke size, each in a fresh kernel"
	$(BIN)/python scripts/prepare_notebooks.py --size smoke --out _build/nbval
	rm -rf _build/results-smoke
	DIFFNOTES_RESULTS=$(CURDIR)/_build/results-smoke $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider _build/nbval
	@echo "== 4/6 reproducibility: the smoke run again, identical verdict figures; papermill rerun with another seed"
	rm -rf _build/results-smoke-2
	DIFFNOTES_RESULTS=$(CURDIR)/_build/results-smoke-2 $(BIN)/python -m pytest --nbval-lax --nbval-current-env -q -p no:cacheprovider _build/nbval
	$(BIN)/python scripts/compare_results.py _build/results-smoke _build/results-smoke-2
	@mkdir -p _build/papermill
	$(BIN)/jupytext --to ipynb -o _build/papermill/01_pipeline.ipynb notebooks/01_pipeline.md
	DIFFNOTES_RESULTS=$(CURDIR)/_build/results-seed1 $(BIN)/papermill _build/papermill/01_pipeline.ipynb _build/papermill/01_pipeline.out.ipynb \
		-k python3 --cwd notebooks -f notebooks/params/01_pipeline.smoke.yml -p seed 1
	@echo "== 5/6 book build (every notebook at CI size, through jupyter-cache)"
	$(MAKE) book
	@echo "== 6/6 browser check: every page of the book in headless Chromium (MathJax, images, links, tracebacks)"
	$(MAKE) browser-deps
	$(BIN)/python scripts/browser_check.py
	@echo "== 7/7 JupyterLab: a .md notebook opens, runs and saves back, in headless Chromium"
	$(MAKE) test-lab

# JupyterLab 4 and jupytext's extension (the `lab` extra), then JupyterLab on notebooks/: a .md opens as a
# notebook with the venv's kernel and the book's figure style, and saving writes the .md back (scripts/lab_check.py).
LAB_STAMP := $(VENV)/.installed-lab

$(LAB_STAMP): $(STAMP)
	$(BIN)/pip install -e '.[lab]'
	touch $@

lab: $(LAB_STAMP)
	$(BIN)/python scripts/lab_check.py --serve $(LAB_ARGS)

# The browser check of `make lab` (under two minutes): a temporary copy of notebooks/ served headless, 01_pipeline.md
# opened in Chromium, its first cells run, a markdown cell edited and saved; a screenshot in _build/lab-check/ on failure.
test-lab: $(LAB_STAMP)
	$(MAKE) browser-deps
	$(BIN)/python scripts/lab_check.py

# Performance: every benchmark of issue 8 in one run (several minutes on two CPU cores), then the "Performance" page
# (book/performance.md) and its figure from the JSON, with book execution times from _build/.jupyter_cache if a book
# was built.  BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--device cuda"` or "--threads 1 --note '...'".
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/sweep_scaling.py
	$(BIN)/python benchmarks/report.py

# Mutation score of the core modules (schedules, samplers, laws, metrics, targets; [tool.mutmut] in pyproject.toml):
# each mutant runs against the unit tests that reach the mutated function.  Not part of `make test`; the score and
# the wall time are in book/contributing.md.  MUTMUT_ONLY selects mutants by name, e.g. MUTMUT_ONLY='diffnotes.laws*'.
MUTMUT_ONLY ?=
mutation: $(STAMP)
	rm -rf mutants
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/mutmut run $(MUTMUT_ONLY)
	$(BIN)/mutmut results

# What scripts/browser_check.py needs: Debian's chromium (never Playwright's own browser download), the
# playwright package, and MathJax 3 from the npm registry (cached in _build/.browser-cache; the CDN is unreachable).
browser-deps: $(STAMP)
	@test -x /usr/bin/chromium || { echo "installing Debian chromium"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium'; }
	@$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/pip install playwright
	@$(BIN)/python scripts/browser_check.py --deps-only

serve:
	$(PYTHON) -m http.server -d _build/html 8000

clean:
	rm -rf _build
