# The two commands: `make run` (the service, embedded default) and `make test` (the whole suite).
# `make bench` runs the benchmarks (bench/all.py) and ends with one table of figures against targets.
.PHONY: run test lint bench
run:
	./scripts/run.sh
test:
	./scripts/test.sh
lint:
	./scripts/test.sh --lint-only
bench:
	bash -c 'source scripts/venv.sh dev && python -m bench.all'
