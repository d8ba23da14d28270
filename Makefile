# Two commands for a new machine (only Python needed): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the CPU wheel of torch is enough for the embedded default; set TORCH for another build
TORCH ?= torch==2.13.0

.PHONY: run test lint clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed  ## the whole pipeline on the embedded tiny model -> results/report.html
	$(BIN)/snakemake --cores 1 results/report.html

test: $(VENV)/.installed  ## the test suite (unit, golden parity, end-to-end pipeline)
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results .snakemake
