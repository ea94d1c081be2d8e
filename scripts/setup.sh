#!/usr/bin/env bash
# Set-up of longrope-rs on a fresh Debian machine with only the Rust toolchain and python3.
#
#   scripts/setup.sh libtorch   project-local venv (.venv) with torch==2.13.0 (libtorch for tch 0.26), created
#                               only if missing, and the .libtorch symlink that .cargo/config.toml points at
#   scripts/setup.sh assets     the default model and corpus into .cache/assets (git-ignored, idempotent)
#   scripts/setup.sh reference  HF transformers + gguf + accelerate in the venv (only to regenerate fixtures)
#   scripts/setup.sh all        libtorch + assets
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.13.0"
PYTHON="${PYTHON:-python3}"

say() { echo "[setup] $*" >&2; }
die() { echo "[setup] error: $*" >&2; exit 1; }

setup_libtorch() {
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
        local t0=$SECONDS
        say "creating $VENV with torch==$TORCH_VERSION from PyPI (about 1.5 min, 4.7 GB) ..."
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" \
            || die "pip install torch==$TORCH_VERSION failed: is PyPI reachable?"
        say "torch installed in $((SECONDS - t0)) s"
    fi
    local torch_dir
    torch_dir="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
    # A relative link keeps the checkout relocatable.
    ln -sfn "$(realpath --relative-to="$ROOT" "$torch_dir")" "$ROOT/.libtorch"
    [ -f "$ROOT/.libtorch/lib/libtorch_cpu.so" ] || die "$ROOT/.libtorch/lib/libtorch_cpu.so missing"
    say "libtorch $TORCH_VERSION ready: .libtorch -> $(readlink "$ROOT/.libtorch")"
}

setup_assets() {
    local py="$PYTHON"
    [ -x "$VENV/bin/python" ] && py="$VENV/bin/python"
    "$py" "$ROOT/scripts/fetch_assets.py" --cache "$ROOT/.cache/assets" --python "$py"
}

setup_reference() {
    setup_libtorch
    "$VENV/bin/python" -c "import transformers, gguf, accelerate" 2>/dev/null && return 0
    say "installing transformers, gguf, accelerate (reference implementation for golden fixtures) ..."
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check transformers gguf accelerate safetensors \
        || die "pip install transformers gguf accelerate failed: is PyPI reachable?"
}

case "${1:-all}" in
    libtorch) setup_libtorch ;;
    assets) setup_assets ;;
    reference) setup_reference ;;
    all) setup_libtorch; setup_assets ;;
    *) die "usage: $0 [libtorch|assets|reference|all]" ;;
esac
