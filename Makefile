# The two commands: `make run` (the service, embedded default) and `make test` (the whole suite).
.PHONY: run test lint
run:
	./scripts/run.sh
test:
	./scripts/test.sh
lint:
	./scripts/test.sh --lint-only
