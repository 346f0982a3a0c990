#!/usr/bin/env bash
# Run every fuzz target for a bounded time: at most FUZZ_BUDGET seconds in
# all (default 360), installing cargo-fuzz and building included. A crash,
# a panic or a failed assertion in any target fails the run; its input is
# kept in fuzz/artifacts/TARGET/.
# Usage: bash tests/fuzz.sh   (tests/run.sh calls it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
start=$SECONDS
budget=${FUZZ_BUDGET:-360}
targets=(codec engine framing proxy_header text)
# The fuzz build persists outside the checkout, so that a fresh clone only
# rebuilds ferroturn itself (a cold build of every dependency takes minutes).
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferroturn/fuzz-target}
mkdir -p "$target_dir"

# libFuzzer needs a nightly compiler; without one, let stable accept the
# unstable flags.
tc=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    tc=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0\.13\.2$'; then
    echo "==> cargo install cargo-fuzz 0.13.2"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# Safe Rust needs no AddressSanitizer; debug assertions make overflow and
# the standard library's checks panic.
flags=(-O -a -s none --target-dir "$target_dir")
echo "==> cargo fuzz build (${targets[*]})"
cargo "${tc[@]}" fuzz build "${flags[@]}"

# The runs go side by side, one per core (the machine has few; a run uses
# one). The engine and text targets, the slowest per input, get two runs
# each (independent corpora, libFuzzer seeds them differently), so that a
# round of two engine runs covers twice the inputs. Each run takes about a
# second more than its -max_total_time (start-up, final statistics): keep
# 2 s per round and 5 s aside. proxy_header, the PROXY protocol header
# (small and cheap), makes a seventh run: the budget stays the same, each
# run gets a little less of it.
runs=(engine engine codec framing text text proxy_header)
host=$(rustc -vV | sed -n 's/^host: //p')
bin="$target_dir/$host/release"
par=$(nproc)
[ "$par" -gt ${#runs[@]} ] && par=${#runs[@]}
rounds=$(((${#runs[@]} + par - 1) / par))
left=$((budget - (SECONDS - start) - 2 * rounds - 5))
each=$((left / rounds))
[ "$each" -lt 10 ] && each=10
[ "$each" -gt 240 ] && each=240

# One run of target $1 for $each seconds; its log in $2.
fuzz_one() {
    local t=$1 log=$2 corpus
    corpus=$(mktemp -d)
    # A fresh corpus each run, started from the committed seeds (read only)
    # with the target's dictionary: the text parsers need whole tokens
    # ("HTTP/1.1", "[[listen]]") that byte mutations rarely find. The RSS
    # limit catches a target whose state grows without bound.
    local extra=() opts=(-max_total_time="$each" -rss_limit_mb=1024 -print_final_stats=1
        -artifact_prefix="artifacts/$t/")
    [ -d "seeds/$t" ] && extra+=("seeds/$t")
    [ -f "dicts/$t.dict" ] && opts+=(-dict="dicts/$t.dict")
    # The engine is emptied after every input, so an input is one scenario
    # of a few clients: 256 bytes hold 10 to 30 packets, enough to fill
    # every quota (8 allocations, 4 permissions each). Left alone,
    # libFuzzer grows inputs to kilobytes within a minute and each then
    # costs several times more without reaching more code.
    [ "$t" = engine ] && opts+=(-max_len=256)
    mkdir -p "artifacts/$t"
    local rc=0
    "$bin/$t" "${opts[@]}" "$corpus" "${extra[@]}" >"$log" 2>&1 || rc=$?
    rm -rf "$corpus"
    return $rc
}

rc=0
logs=$(mktemp -d)
declare -A total
for ((i = 0; i < ${#runs[@]}; i += par)); do
    round=("${runs[@]:i:par}")
    echo "==> fuzz ${round[*]} for ${each} s, side by side"
    pids=()
    for j in "${!round[@]}"; do
        fuzz_one "${round[j]}" "$logs/$((i + j)).log" &
        pids+=($!)
    done
    for j in "${!round[@]}"; do
        t=${round[j]}
        log=$logs/$((i + j)).log
        if ! wait "${pids[j]}"; then
            echo "error: fuzz target $t failed:" >&2
            grep -E -A20 "panicked|ERROR|SUMMARY" "$log" | head -60 >&2 || tail -20 "$log" >&2
            rc=1
        fi
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        r=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "    $t: ${n:-?} inputs, ${r:-?} inputs/s"
        total[$t]=$((${total[$t]:-0} + ${n:-0}))
    done
done
rm -rf "$logs"
for t in "${!total[@]}"; do
    echo "    $t: ${total[$t]} inputs in all"
done | sort
echo "==> fuzzing took $((SECONDS - start)) s"
exit $rc
