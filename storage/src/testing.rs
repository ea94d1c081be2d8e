//! For test suites: the PostgreSQL server they run against. The PostgreSQL variants of the storage and
//! distributed tests are `#[ignore]`d, so a plain `cargo test` lists them as ignored; `make test` starts a
//! server (`scripts/postgres.sh`), names it in `LONGROPE_TEST_POSTGRES` and runs them with
//! `--include-ignored`, where a missing URL fails them instead of skipping.

/// The variable naming the test server: `postgres://USER@HOST:PORT/DB`.
pub const POSTGRES_VAR: &str = "LONGROPE_TEST_POSTGRES";

/// The URL in [`POSTGRES_VAR`]. Panics (failing the calling test) when it is unset or empty: a test that
/// needs a server must not pass without one.
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_VAR).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        panic!(
            "{POSTGRES_VAR} is not set: this test needs a PostgreSQL server (`make test` starts one with \
             scripts/postgres.sh; or {POSTGRES_VAR}=$(scripts/postgres.sh start) cargo test --tests -- --include-ignored)"
        )
    })
}
