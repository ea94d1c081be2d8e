#!/usr/bin/env bash
# Set-up of longrope-rs on a fresh Debian machine with only the Rust toolchain and python3.
#
#   scripts/setup.sh libtorch   project-local venv (.venv) with torch==2.13.0 (libtorch for tch 0.26), created
#                               only if missing, and the .libtorch symlink that .cargo/config.toml points at
#   scripts/setup.sh assets     the default model and corpus into .cache/assets (git-ignored, idempotent)
#   scripts/setup.sh reference  HF transformers + gguf + accelerate in the venv (only to regenerate fixtures)
#   scripts/setup.sh llamacpp   llama.cpp's llama-perplexity into .cache/llamacpp (the peer the GGUF export is
#                               checked against), from registry packages in ~10 s: the prebuilt CPU libraries of npm
#                               @node-llama-cpp/linux-x64@3.22.1 and the llama.cpp source they were built from (the
#                               git bundle inside npm node-llama-cpp@3.22.1, commit 0ad4a86); only the perplexity
#                               tool's two source files are compiled. Needs npm, git and g++.
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
        "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION" \
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
    "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check transformers gguf accelerate safetensors \
        || die "pip install transformers gguf accelerate failed: is PyPI reachable?"
}

LLAMACPP_NPM_VERSION="3.22.1"

setup_llamacpp() {
    local dir="$ROOT/.cache/llamacpp"
    [ -x "$dir/bin/llama-perplexity" ] && "$dir/bin/llama-perplexity" --version >/dev/null 2>&1 && return 0
    for tool in npm git g++; do
        if ! command -v "$tool" >/dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                say "installing npm, git and g++ with apt-get ..."
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm git g++ >/dev/null \
                    || die "apt-get install npm git g++ failed"
            else
                die "$tool not found: llama.cpp's llama-perplexity is built with npm, git and g++"
            fi
        fi
    done
    local v="$LLAMACPP_NPM_VERSION"
    mkdir -p "$dir/npm" "$dir/bin"
    say "building llama.cpp's llama-perplexity (node-llama-cpp $v) into $dir ..."
    (cd "$dir/npm" && npm pack --silent "@node-llama-cpp/linux-x64@$v" "node-llama-cpp@$v" >/dev/null) \
        || die "npm pack node-llama-cpp@$v failed: is the npm registry reachable?"
    mkdir -p "$dir/npm/bins" "$dir/npm/main"
    tar xzf "$dir/npm/node-llama-cpp-linux-x64-$v.tgz" -C "$dir/npm/bins"
    tar xzf "$dir/npm/node-llama-cpp-$v.tgz" -C "$dir/npm/main" package/llama/gitRelease.bundle
    [ -d "$dir/src" ] || git -c advice.detachedHead=false clone -q "$dir/npm/main/package/llama/gitRelease.bundle" "$dir/src"
    cp "$dir"/npm/bins/package/bins/linux-x64/*.so "$dir/bin/"
    g++ -O2 -std=c++17 -DLLAMA_SHARED -I"$dir/src/common" -I"$dir/src/include" -I"$dir/src/ggml/include" \
        -I"$dir/src/vendor" "$dir/src/tools/perplexity/main.cpp" "$dir/src/tools/perplexity/perplexity.cpp" \
        -o "$dir/bin/llama-perplexity" -L"$dir/bin" -l:libllama-common.so -l:libllama.v0.5.0.so \
        -l:libggml.v0.5.0.so -l:libggml-base.so -pthread -Wl,-rpath,'$ORIGIN' \
        || die "compiling llama-perplexity failed"
    "$dir/bin/llama-perplexity" --version >/dev/null 2>&1 || die "$dir/bin/llama-perplexity does not run"
    say "llama-perplexity ready: $dir/bin/llama-perplexity (llama.cpp source in $dir/src)"
}

case "${1:-all}" in
    libtorch) setup_libtorch ;;
    assets) setup_assets ;;
    reference) setup_reference ;;
    llamacpp) setup_llamacpp ;;
    all) setup_libtorch; setup_assets ;;
    *) die "usage: $0 [libtorch|assets|reference|llamacpp|all]" ;;
esac
