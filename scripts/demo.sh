#!/usr/bin/env bash
# The README's main job. It grows with the project: today it shows what exists (environment, plugins).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/longrope"
echo "== longrope demo: the head-to-head experiment is not built yet; showing what exists so far =="
"$BIN" env
"$BIN" plugins
