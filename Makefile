# Two commands do all set-up on a fresh machine:
#   make run   - create .venv, install, run every notebook at the `small` profile whose results are not
#                of this code and parameters (FORCE=1: every notebook)
#   make test  - create .venv, install, run the tests
#   make lab    - same set-up, then JupyterLab on notebooks/ (kernel "kd-studies (.venv)")
#   make report - the executed notebooks of the last run as a static site (runs/<profile>/report/)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KERNEL := kd-studies
# `make test` runs one pytest worker per core, at most 4 (each runs notebook kernels)
TEST_WORKERS ?= auto

.PHONY: install run test bench lab report clean-cache

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "kd-studies (.venv)"
	@touch $@

install: $(STAMP)

run: install
	@start=$$(date +%s); \
	$(PY) -m kdutils run --profile small --jobs 2 $(if $(FORCE),--force) && \
	echo "make run: all notebooks at small in $$(( $$(date +%s) - start )) s"

test: install
	@start=$$(date +%s); \
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4; rc=$$?; \
	echo "make test: tests in $$(( $$(date +%s) - start )) s"; exit $$rc

lab: install
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

report: install
	$(PY) -m kdutils report

bench: install
	$(PY) -m kdutils bench synthworld

clean-cache:
	rm -rf .cache runs
