#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests (docs/distributed.md): `make test` runs
#   scripts/postgres.sh start   -> installs PostgreSQL if missing (Debian: apt-get install postgresql), creates a
#                                  cluster in $LONGROPE_PG_DIR (default /tmp/longrope-pg-$PORT), starts it on
#                                  127.0.0.1:$LONGROPE_PG_PORT (default 55432), creates the database
#                                  `longrope_test`, and prints its URL on stdout (for LONGROPE_TEST_POSTGRES);
#   scripts/postgres.sh stop    -> stops it and removes the cluster.
# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user the package creates.
set -euo pipefail

PORT="${LONGROPE_PG_PORT:-55432}"
DIR="${LONGROPE_PG_DIR:-/tmp/longrope-pg-$PORT}"
USER_NAME=longrope
DB=longrope_test

log() { echo "postgres.sh: $*" >&2; }

bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    done
    return 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin
    if ! bin="$(bindir)"; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            log "installing PostgreSQL (apt-get install postgresql)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2 || {
                apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
            }
            # The package may start its own cluster on 5432; ours is separate, on $PORT.
        fi
        bin="$(bindir)" || { log "PostgreSQL is not installed and cannot be (need root and apt-get)"; exit 1; }
    fi
    if [ -f "$DIR/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
        log "already running in $DIR"
    else
        rm -rf "$DIR"
        mkdir -p "$DIR"
        if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi
        as_owner "$bin/initdb" -D "$DIR" -U "$USER_NAME" --auth=trust -E UTF8 >"$DIR.initdb.log" 2>&1 \
            || { cat "$DIR.initdb.log" >&2; exit 1; }
        as_owner "$bin/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 \
            -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2 \
            || { cat "$DIR/server.log" >&2; exit 1; }
        as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" "$DB"
        log "started on 127.0.0.1:$PORT ($DIR)"
    fi
    echo "postgres://$USER_NAME@127.0.0.1:$PORT/$DB"
}

stop() {
    local bin
    bin="$(bindir)" || exit 0
    if [ -d "$DIR" ]; then
        as_owner "$bin/pg_ctl" -D "$DIR" -m fast -w stop >&2 || true
        rm -rf "$DIR" "$DIR.initdb.log"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
