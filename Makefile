# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-integration lint format standalone opensearch bench clean

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
	$(MAKE) test-integration

# A real Airflow (api-server, scheduler, dag-processor, triggerer) on loopback, driven through
# its REST API and CLI; logs and a JSON summary land in test-output/integration/.
test-integration: install
	$(BIN)/pytest -q tests/integration

# The Airflow UI on http://127.0.0.1:8080, or AIRFLOW__API__PORT (the admin password's file is
# printed at start-up). Every process listens on loopback only; see scripts/airflow_local.py.
standalone: install
	$(BIN)/python scripts/airflow_local.py standalone

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
