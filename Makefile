# Every target sets itself up: .venv is created and filled when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    := $(VENV)/.installed-demo
CODE    := src tests $(wildcard benchmarks) docs/screenshots.py

.PHONY: demo test test-fast lint typecheck pytest browser bench docs screenshots dist clean

# Everything: what the tests, the docs and the wheel need.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,keras,serve,ray,hf,docs]'
	touch $(STAMP)

# The demo alone: camlens and its sample photos, not Ray, Keras, Playwright or the test tools
# (nothing more when everything is there already).
$(DEMO): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ]; then \
		$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 && \
		$(BIN)/pip install -q -e '.[demo]'; fi
	touch $(DEMO)

demo: $(DEMO)
	$(BIN)/python -m camlens.demo

test: $(STAMP) lint typecheck pytest

# The same checks without the tests marked slow (Ray, the browser, load, long runs): a few minutes.
test-fast: $(STAMP) lint typecheck
	$(BIN)/pytest -q -n 2 --dist loadfile -m "not slow" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy src

# Two workers (the machines have 2 cores; torch runs one thread in each), a test file per worker.
pytest: $(STAMP) browser
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=20

# The browser tests drive Debian's chromium (Playwright's own browser download needs the internet).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# The documentation site (mkdocs.yml, docs/), strictly: a broken link or reference fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

# The page's pictures in docs/, cut from the browser tests' screenshots.
screenshots: $(STAMP) browser
	$(BIN)/python docs/screenshots.py

# The sdist and the wheel in dist/, checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) build dist site *.egg-info demo-output
