# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint format standalone opensearch bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	# foolbox ships labelled ImageNet photos; its own dependencies are not wanted.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: install
	$(BIN)/python scripts/demo.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest -q

# The Airflow UI on http://127.0.0.1:8080 (user and password are printed at start-up).
standalone: install
	eval "$$($(BIN)/python scripts/airflow_local.py env)" && \
	  AIRFLOW__API__HOST=127.0.0.1 PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/airflow standalone

# A local OpenSearch 2.19 node with the k-NN plugin (Java 17+ and Maven; data in var/opensearch).
# It prints its URL (port 9200 or the next free one); use it as opensearch://127.0.0.1:PORT.
opensearch:
	opensearch/node.sh run var/opensearch $${OPENSEARCH_PORT:-9200-9300}

bench: install
	$(BIN)/python bench/bench_preprocess.py
	$(BIN)/python bench/bench_embed.py
	$(BIN)/python bench/bench_store.py
	$(BIN)/python bench/bench_plan.py --n 100000
	$(BIN)/python bench/bench_nochange.py --n 100000
	$(BIN)/python bench/bench_e2e.py --n 1000
	$(BIN)/python bench/bench_export.py --n 100000

clean:
	rm -rf var test-output
