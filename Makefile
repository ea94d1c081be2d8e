# The two commands of the README:
#   make demo   set up, fetch the default model + corpus, build, and run the demo (the main job)
#   make test   set up, fetch the assets, and run the whole test suite
.PHONY: setup assets reference llamacpp build test demo fixtures

setup:
	scripts/setup.sh libtorch

assets: setup
	scripts/setup.sh assets

reference:
	scripts/setup.sh reference

# llama.cpp's llama-perplexity in .cache/llamacpp: tests/gguf_export.rs checks exported GGUF files with it.
llamacpp:
	scripts/setup.sh llamacpp

build: setup
	cargo build --release -p longrope

# The integration tests in tests/ run the `longrope` binary and the example plugin libraries, which
# `cargo test` alone does not build (they belong to other workspace packages): build the workspace first.
# The storage and distributed tests run against SQLite and against a real PostgreSQL server, installed (if
# missing) and started on a local port by scripts/postgres.sh, and stopped afterwards (docs/distributed.md).
# The PostgreSQL tests are #[ignore]d for a plain `cargo test`; here --include-ignored runs them, and a server
# that is missing or unreachable fails them. (Doc tests run apart: their `ignore` blocks are not tests.)
test: assets llamacpp
	cargo build --workspace
	url=$$(scripts/postgres.sh start) && LONGROPE_TEST_POSTGRES=$$url cargo test --workspace --tests -- --include-ignored \
	  && cargo test --workspace --doc; \
	  rc=$$?; scripts/postgres.sh stop; exit $$rc

demo: assets build
	scripts/demo.sh

# Regenerate the golden fixtures under tests/fixtures from HF transformers (installs it into the venv).
fixtures: reference assets llamacpp
	for f in scripts/fixtures/*.py; do .venv/bin/python $$f || exit 1; done
