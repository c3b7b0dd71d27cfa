# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench chaos lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/inboxsync demo

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Its own PostgreSQL and Redis, real processes killed under seeded traffic; writes bench/chaos.md.
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(if $(SEED),--seed $(SEED)) $(if $(EVENTS),--events $(EVENTS))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy workers handlers schemas store api cli observability settings.py celeryconfig.py version.py

clean:
	rm -rf $(VENV) var .pytest_cache
