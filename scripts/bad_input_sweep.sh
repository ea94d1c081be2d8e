#!/usr/bin/env bash
# Bad-input sweep (issue 15): run the `longrope` binary on the cases of the reliability issue plus more, as a
# careless or hostile user would, and check that every one ends cleanly: no panic, abort, signal or hang, the
# expected exit status, an error naming what is wrong, no lost earlier result and no temporary file left.
#
#   scripts/bad_input_sweep.sh [BIN]     # BIN defaults to target/debug/longrope (build the workspace first)
#
# Uses only the tiny random Llama in tests/fixtures and small generated texts (a few seconds per case on CPU).
# Prints one line per case and a summary; exits 1 if any case did not end as expected. WORK=DIR keeps the
# scratch files (default: a temporary directory, removed at the end). Every case runs under an address-space
# limit (SWEEP_VMEM_KB, default 4000000 = 4 GB; `unlimited` to lift it), so a binary that reads without bound
# (e.g. `--data /dev/zero` before the fix) fails fast instead of exhausting the machine's memory.
# (CUDA initialisation on a GPU machine may need more address space: SWEEP_VMEM_KB=unlimited there.)
set -uo pipefail
ulimit -v "${SWEEP_VMEM_KB:-4000000}" || exit 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(realpath "${1:-$ROOT/target/debug/longrope}")"
[ -x "$BIN" ] || { echo "no binary at $BIN: run cargo build --workspace" >&2; exit 2; }
PLUGIN="$(dirname "$BIN")/liblongrope_plugin_powerlaw.so"
TINY="$ROOT/tests/fixtures/tiny-llama"
if [ -n "${WORK:-}" ]; then mkdir -p "$WORK"; W="$(realpath "$WORK")"; else W="$(mktemp -d)"; trap 'rm -rf "$W"' EXIT; fi
cd "$W" || exit 2
export LD_LIBRARY_PATH="$ROOT/.libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LONGROPE_DIGEST_CACHE="$W/digests.json"

pass=0; fail=0; declare -A why=()
words() { python3 -c "
import random,sys; random.seed(int(sys.argv[1])); w=sys.argv[2].split()
print(' '.join(random.choice(w) for _ in range(int(sys.argv[3]))))" "$@"; }
words 1 "the river ran past old mill and a heron stood very still while rain fell" 3000 > corpus.txt
cp -r "$TINY" model

# case NAME EXPECT(ok|err) 'NEEDLE|NEEDLE' CHECK -- COMMAND...
#   NEEDLE: substrings that must all appear on stderr ('|'-separated, empty for none);
#   CHECK: a shell snippet that must succeed afterwards (empty for none).
case_() {
    local name="$1" expect="$2" needles="$3" check="$4"; shift 5
    local t0=$SECONDS
    timeout 120 "$@" >"out.txt" 2>"err.txt"; local rc=$?
    local verdict="" problem=""
    if grep -q "panicked at" err.txt; then problem="panic"
    elif [ $rc -eq 124 ]; then problem="timeout"
    elif [ $rc -gt 128 ]; then problem="signal $((rc - 128))"
    elif [ "$expect" = ok ] && [ $rc -ne 0 ]; then problem="exit $rc (expected success)"
    elif [ "$expect" = err ] && [ $rc -ne 1 ]; then problem="exit $rc (expected a refusal)"
    fi
    if [ -z "$problem" ] && [ -n "$needles" ]; then
        IFS='|' read -ra list <<<"$needles"
        for n in "${list[@]}"; do grep -qF -- "$n" err.txt || { problem="message lacks '$n'"; break; }; done
    fi
    if [ -z "$problem" ] && [ "$expect" = err ] && [ "$(grep -c '^error: ' err.txt)" != 1 ]; then problem="no one-line error"; fi
    if [ -z "$problem" ] && [ -n "$check" ] && ! (eval "$check") >/dev/null 2>&1; then problem="check failed: $check"; fi
    if [ -z "$problem" ] && find "$W" -name '*.tmp*' | grep -q .; then problem="temporary files left: $(find "$W" -name '*.tmp*' | head -3 | tr '\n' ' ')"; fi
    if [ -z "$problem" ]; then
        pass=$((pass + 1)); verdict="ok  "
    else
        fail=$((fail + 1)); verdict="FAIL"; why["${problem%% *}"]=$(( ${why["${problem%% *}"]:-0} + 1 ))
    fi
    printf '%s %-52s rc=%-3s %3ss  %s\n' "$verdict" "$name" "$rc" "$((SECONDS - t0))" "${problem:-$(grep -m1 '^error: ' err.txt | cut -c1-150)}"
    find "$W" -name '*.tmp*' -delete 2>/dev/null
}
L="$BIN"
printf '#!/bin/sh\nexec "%s" ppl --model model --data corpus.txt "$@"\n' "$BIN" > ppl.sh
# A full disk, simulated with a file-size limit (writes beyond 2 KiB fail with EFBIG; SIGXFSZ ignored).
printf '#!/bin/sh\ntrap "" XFSZ\nulimit -f 2\nexec "$@"\n' > full.sh
chmod +x ppl.sh full.sh
ppl=./ppl.sh full=./full.sh

echo "== 1. lost results"
case_ "ppl writes results" ok "" "grep -q '^ppl,64,' r1/results.csv" -- $ppl --lengths 64 --out r1
case_ "failing ppl keeps the earlier results" err "100000|nothing written" "grep -q '^ppl,64,' r1/results.csv" -- $ppl --lengths 100000 --out r1
case_ "partly failing ppl keeps both runs' results" err "100000" "grep -q '^ppl,128,' r1/results.csv && grep -q '^ppl,64,' r1/results-1.csv" -- $ppl --lengths 128,100000 --out r1
case_ "failing passkey keeps the earlier results" err "passkey" "grep -q '^ppl,128,' r1/results.csv" -- "$L" passkey --model model --lengths 8 --out r1
cat > exp.toml <<EOF
name = "e"
target = 512
[[model]]
name = "m"
path = "model"
[data]
corpus = ["corpus.txt"]
[[method]]
name = "pi"
scaling = "pi"
[[eval]]
evaluator = "ppl"
lengths = [64, 128]
[eval.config]
samples = 1
truncate = true
EOF
case_ "experiment runs" ok "" "test -f ex/results.json" -- "$L" run exp.toml --out ex
cp ex/results.json ex-results.json
case_ "ppl --out an experiment dir is refused" err "ex|an experiment run" "cmp ex/results.json ex-results.json" -- $ppl --lengths 64 --out ex
case_ "run --out a ppl results dir is refused" err "r1|ppl/passkey/eval" "grep -q '^ppl,128,' r1/results.csv" -- "$L" run exp.toml --out r1
case_ "tokenize --out an experiment dir is refused" err "an experiment run" "cmp ex/results.json ex-results.json" -- "$L" tokenize --model model --input corpus.txt --out ex
case_ "ppl --out under /proc is refused before loading" err "/proc/longrope-x" "" -- $ppl --lengths 64 --out /proc/longrope-x
case_ "run --out under /proc is refused" err "/proc/longrope-x" "" -- "$L" run exp.toml --out /proc/longrope-x
case_ "ppl --out an existing file is refused" err "not a directory" "" -- $ppl --lengths 64 --out corpus.txt

echo "== 2. stale cache"
python3 - <<'EOF'
import struct, json, array
p = "model/model.safetensors"
b = bytearray(open(p, "rb").read()); n = struct.unpack("<Q", b[:8])[0]
data = array.array("f", bytes(b[8 + n:]))
for i in range(len(data)): data[i] *= 3.0
b[8 + n:] = data.tobytes(); open(p, "r+b").write(b)   # in place: same size, same config
EOF
touch -r "$TINY/model.safetensors" model/model.safetensors   # even the old modification time
case_ "weights overwritten in place are recomputed" ok "" "! grep -q '(cached)' out.txt && ! cmp -s ex/results.json ex-results.json" -- "$L" run exp.toml --out ex
case_ "unchanged inputs are cached" ok "" "test \$(grep -c '(cached)' out.txt) = 2" -- "$L" run exp.toml --out ex
words 2 "alpha beta gamma delta sun moon star" 3000 > corpus.txt
case_ "a changed corpus is recomputed" ok "" "! grep -q '(cached)' out.txt" -- "$L" run exp.toml --out ex
words 1 "the river ran past old mill and a heron stood very still while rain fell" 3000 > corpus.txt

echo "== 3. mixed search"
cat > s.toml <<EOF
seed = 0
target_length = 512
[model]
path = "model"
[fitness]
documents = 1
corpus = ["corpus.txt"]
[strategy]
strategy = "evolution"
population_size = 3
iterations = 2
mutation_numbers = 1
crossover_size = 0
parents_size = 2
EOF
case_ "search stops after a generation" ok "" "test -f so/checkpoint.json" -- "$L" search --config s.toml --out so --no-progress --stop-after-generations 1
cp so/history.jsonl so-history.jsonl
words 3 "alpha beta gamma delta sun moon star" 3000 > corpus.txt
case_ "resume after the corpus changed is refused" err "corpus changed|inputs.data" "cmp so/history.jsonl so-history.jsonl" -- "$L" search --config s.toml --out so --no-progress --resume
words 1 "the river ran past old mill and a heron stood very still while rain fell" 3000 > corpus.txt
cp model/model.safetensors weights.bak; python3 -c "
p='model/model.safetensors'; b=bytearray(open(p,'rb').read()); b[-4:]=bytes(4); open(p,'r+b').write(b)"
case_ "resume after the weights changed is refused" err "inputs.model" "cmp so/history.jsonl so-history.jsonl" -- "$L" search --config s.toml --out so --no-progress --resume
cp weights.bak model/model.safetensors
case_ "resume on unchanged inputs finishes" ok "" "test -f so/best.json" -- "$L" search --config s.toml --out so --no-progress --resume

echo "== 4. absurd values"
for m in pi yarn ntk dynamic-ntk llama3; do
    printf 'method = "%s"\nfactor = 1e308\n' "$m" > "$m-huge.toml"
    case_ "$m factor = 1e308 names the file and the field" err "$m-huge.toml|$m.factor" "" -- $ppl --lengths 64 --out rx --scaling "$m-huge.toml"
done
printf 'method = "longrope"\nfactors = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1e308]\n' > lr-huge.toml
case_ "longrope factors of 1e308 name the file and the field" err "lr-huge.toml|longrope.factors[7]" "" -- $ppl --lengths 64 --out rx --scaling lr-huge.toml
printf 'method = "yarn"\nfactor = nan\n' > yarn-nan.toml
case_ "yarn factor = nan" err "yarn-nan.toml|yarn.factor" "" -- $ppl --lengths 64 --out rx --scaling yarn-nan.toml
printf 'method = "yarn"\nbeta_fast = 1e300\n' > yarn-beta.toml
case_ "yarn beta_fast = 1e300" err "yarn-beta.toml|yarn.beta_fast" "" -- $ppl --lengths 64 --out rx --scaling yarn-beta.toml
printf 'method = "longrope"\nfactors = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]\nattention_factor = 1e30\n' > lr-attn.toml
case_ "longrope attention_factor = 1e30" err "lr-attn.toml|attention_factor" "" -- $ppl --lengths 64 --out rx --scaling lr-attn.toml
case_ "rope --head-dim 1e11 is refused" err "head_dim" "" -- "$L" rope --scaling pi --head-dim 100000000000 --base 10000 --original 256 --target 512
case_ "rope --target 1e15 is refused" err "target" "" -- "$L" rope --scaling pi --head-dim 64 --base 10000 --original 256 --target 1000000000000000
cp -r model hd; sed -i 's/"head_dim": 16/"head_dim": 100000000000/' hd/config.json
case_ "config.json head_dim = 1e11 is refused" err "hd/config.json|head_dim" "" -- "$L" model info hd
cp -r model mp; sed -i 's/"max_position_embeddings": 256/"max_position_embeddings": 1000000000000/' mp/config.json
case_ "config.json max_position_embeddings = 1e12" err "mp/config.json|max_position_embeddings" "" -- "$L" model info mp
cp -r model rt; sed -i 's/"rope_theta": 10000.0/"rope_theta": 1e300/' rt/config.json
case_ "config.json rope_theta = 1e300" err "rt/config.json|rope_theta" "" -- "$L" model info rt
sed 's/^target = 512/target = 0/' exp.toml > t0.toml
case_ "run --check: target = 0 names the field" err "t0.toml|target" "" -- "$L" run t0.toml --check
sed 's/lengths = \[64, 128\]/lengths = [64, 64]/' exp.toml > dup.toml
case_ "run --check: duplicate lengths" err "dup.toml|lengths|64 appears more than once" "" -- "$L" run dup.toml --check
sed 's/lengths = \[64, 128\]/lengths = [64, 100000000000]/' exp.toml > long.toml
case_ "run --check: a length of 1e11" err "long.toml|lengths" "" -- "$L" run long.toml --check
sed 's/^\[eval.config\]/seeds = [1, 1]\nseed_field = "shuffle_seed"\n[eval.config]/' exp.toml > seeds.toml
case_ "run --check: duplicate seeds" err "seeds.toml|seeds" "" -- "$L" run seeds.toml --check
case_ "ppl --lengths 64,64" err "--lengths|64 appears more than once" "" -- $ppl --lengths 64,64 --out rx
case_ "ppl --lengths 0" err "--lengths" "" -- $ppl --lengths 0 --out rx
case_ "ppl --lengths 1e11" err "--lengths" "" -- $ppl --lengths 100000000000 --out rx
case_ "ppl --target 0" err "--target" "" -- $ppl --lengths 64 --target 0 --out rx
case_ "ppl --samples 0" err "samples" "" -- $ppl --lengths 64 --samples 0 --out rx
case_ "ppl --sliding-window 1e11" err "ppl.sliding_window" "" -- $ppl --lengths 64 --sliding-window 100000000000 --out rx
case_ "passkey --samples 1e11" err "passkey.samples" "" -- "$L" passkey --model model --lengths 512 --samples 100000000000 --out rx
case_ "generate --max-new-tokens 1e11" err "--max-new-tokens" "" -- "$L" generate --model model --prompt hi --max-new-tokens 100000000000
case_ "bench forward --lengths 1e11" err "--lengths" "" -- "$L" bench forward --model model --lengths 100000000000
case_ "passkey --depths 2" err "passkey.depths" "" -- "$L" passkey --model model --lengths 512 --depths 2 --out rx
sed 's/target_length = 512/target_length = 0/' s.toml > s0.toml
case_ "search target_length = 0" err "s0.toml|target_length" "" -- "$L" search --config s0.toml --out sx --no-progress
sed 's/target_length = 512/target_length = 100000000000/' s.toml > s1.toml
case_ "search target_length = 1e11" err "s1.toml|target_length" "" -- "$L" search --config s1.toml --out sx --no-progress
printf '[space]\nmax_factor = 1e308\n' >> s1.toml; sed 's/target_length = 100000000000/target_length = 512/' s1.toml > s2.toml
case_ "search space.max_factor = 1e308" err "s2.toml|space.max_factor" "" -- "$L" search --config s2.toml --out sx --no-progress
if [ -f "$PLUGIN" ]; then
    printf 'method = "powerlaw"\nfactor = 1e308\n' > pow.toml
    case_ "dynamic plugin tables that underflow f32" err "inv_freq|powerlaw" "" -- "$L" --plugin "$PLUGIN" ppl --model model --data corpus.txt --lengths 64 --out rx --scaling pow.toml
fi

echo "== 5. bad plugins"
if [ -f "$PLUGIN" ]; then
    for n in 100 4096 20000 200000 2000000; do
        head -c $n "$PLUGIN" > "trunc$n.so"
        case_ "plugin truncated to $n bytes" err "trunc$n.so" "" -- "$L" --plugin "trunc$n.so" plugins
    done
    case_ "a text file as a plugin" err "notlib.so" "" -- sh -c "echo hello > notlib.so; exec '$L' --plugin notlib.so plugins"
    case_ "a directory as a plugin" err "model" "" -- "$L" --plugin model plugins
    case_ "the complete plugin still loads" ok "" "grep -q powerlaw out.txt" -- "$L" --plugin "$PLUGIN" plugins
else
    echo "(no $PLUGIN: build the workspace to sweep plugins)"
fi

echo "== 6. leftovers and dead ends"
case_ "experiment on a full disk leaves no temporary file" err "results" "" -- $full "$L" run exp.toml --out fx
case_ "the re-run after the disk is freed reuses the cells" ok "" "test \$(grep -c '(cached)' out.txt) = 2 && test -f fx/report.md" -- "$L" run exp.toml --out fx
case_ "ppl on a full disk keeps the earlier results" err "" "cat r1/results*.csv | grep -q '^ppl,128,'" -- $full "$L" ppl --model model --data corpus.txt --lengths 64,128,256,512 --out r1
sed 's/target_length = 512/target_length = 100000/' s.toml > sfar.toml
case_ "search failing before its first evaluation" err "100000" "" -- "$L" search --config sfar.toml --out sf --no-progress
case_ "... then a plain re-run starts again" ok "" "test -f sf/best.json" -- "$L" search --config s.toml --out sf --no-progress
case_ "--data /dev/zero is refused" err "/dev/zero|not a regular file" "" -- "$L" ppl --model model --lengths 64 --out rx --data /dev/zero
case_ "--scaling /dev/zero is refused" err "/dev/zero" "" -- $ppl --lengths 64 --out rx --scaling /dev/zero
case_ "run /dev/zero is refused" err "/dev/zero" "" -- "$L" run /dev/zero --check
case_ "search --config /dev/zero is refused" err "/dev/zero" "" -- "$L" search --config /dev/zero --out sx
case_ "model /dev/zero is refused" err "/dev/zero" "" -- "$L" model info /dev/zero
mkfifo fifo.txt
case_ "--data a FIFO is refused" err "fifo.txt" "" -- "$L" ppl --model model --lengths 64 --out rx --data fifo.txt
: > empty.txt
case_ "an empty corpus" err "no document has|longest has 0 tokens" "" -- "$L" ppl --model model --lengths 64 --out rx --data empty.txt

case_ "tokenize --input /dev/zero is refused" err "/dev/zero" "" -- "$L" tokenize --model model --input /dev/zero --out tz
sed 's|corpus = \["corpus.txt"\]|corpus = ["/dev/zero"]|' exp.toml > zero.toml
case_ "an experiment corpus of /dev/zero is refused" err "/dev/zero" "" -- "$L" run zero.toml --out zx
printf 'method = "longrope"\nfactors_file = "/dev/zero"\n' > lr-zero.toml
case_ "factors_file = /dev/zero is refused" err "/dev/zero" "" -- $ppl --lengths 64 --out rx --scaling lr-zero.toml
case_ "finetune --config /dev/zero is refused" err "/dev/zero" "" -- "$L" finetune --config /dev/zero --out fz
mkdir -p ftdir && echo '{}' > ftdir/finetune.json
case_ "ppl --out a fine-tuning dir is refused" err "a fine-tuning run" "test ! -e ftdir/results.json" -- $ppl --lengths 64 --out ftdir
case_ "search --out an experiment dir is refused" err "an experiment run" "cmp ex/results.json ex-results.json || true" -- "$L" search --config s.toml --out ex --no-progress
cp -r so scorrupt; echo '{"version": 1,' > scorrupt/checkpoint.json
case_ "resume from a corrupt checkpoint" err "scorrupt/checkpoint.json|corrupt" "" -- "$L" search --config s.toml --out scorrupt --no-progress --resume
cp -r model trunc-st; head -c 1000 model/model.safetensors > trunc-st/model.safetensors
case_ "a truncated safetensors file" err "trunc-st/model.safetensors|truncated" "" -- "$L" model info trunc-st
GGUF="$ROOT/.cache/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$GGUF" ]; then
    head -c 1000000 "$GGUF" > trunc.gguf
    case_ "a truncated GGUF file" err "trunc.gguf|truncated" "" -- "$L" model info trunc.gguf
fi
echo '{"results": 3}' > bad-results.json
case_ "compare on a malformed results.json" err "bad-results.json" "" -- "$L" compare bad-results.json
case_ "rope --hf-config pointing at a directory" err "model" "" -- "$L" rope --scaling yarn --head-dim 64 --base 10000 --original 256 --target 512 --hf-config model

echo "== 7. messages"
mkdir -p now; cp model/config.json model/tokenizer.json now/
case_ "a directory without weights" err "now: no weights" "" -- "$L" model info now
cp -r model nohid; sed -i '/"hidden_size"/d' nohid/config.json
case_ "config.json without hidden_size" err "nohid/config.json: hidden_size: missing" "" -- "$L" model info nohid
cp -r model noheads; sed -i '/"num_attention_heads"/d' noheads/config.json
case_ "config.json without num_attention_heads" err "num_attention_heads: missing" "" -- "$L" model info noheads
cp -r ex exc; echo '{bad' > exc/experiment.json
case_ "a corrupt experiment.json" err "experiment.json: does not parse" "" -- "$L" run exp.toml --out exc
case_ "... and --resume reuses its cells" ok "" "test \$(grep -c '(cached)' out.txt) = 2" -- "$L" run exp.toml --out exc --resume
"$L" tokenize --model model --input corpus.txt --out store >/dev/null 2>&1; rm -f store/index.json
case_ "a token store without index.json" err "without index.json" "" -- "$L" ppl --model model --lengths 64 --out rx --data store
case_ "an I/O error says its cause once" err "/nonexistent: No such file or directory (os error 2)" "test \$(grep -o 'No such file' err.txt | wc -l) = 1" -- "$L" ppl --model model --lengths 64 --out rx --data /nonexistent

echo "== summary: $((pass + fail)) cases, $pass as expected, $fail not$(for k in "${!why[@]}"; do printf '; %s: %s' "$k" "${why[$k]}"; done)"
[ "$fail" -eq 0 ]
