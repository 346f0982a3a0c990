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
targets=(codec engine framing http_head websocket text)
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

# Each run takes about a second more than its -max_total_time (start-up,
# final statistics): keep 2 s per target and 5 s aside.
left=$((budget - (SECONDS - start) - 2 * ${#targets[@]} - 5))
each=$((left / ${#targets[@]}))
[ "$each" -lt 10 ] && each=10
[ "$each" -gt 120 ] && each=120
rc=0
for t in "${targets[@]}"; do
    corpus=$(mktemp -d)
    echo "==> fuzz $t for ${each} s"
    # A fresh corpus each run, started from the committed seeds (read only)
    # with the target's dictionary: the text parsers need whole tokens
    # ("HTTP/1.1", "[[listen]]") that byte mutations rarely find. The RSS
    # limit catches a target whose state grows without bound.
    extra=()
    [ -d "seeds/$t" ] && extra+=("seeds/$t")
    opts=(-max_total_time="$each" -rss_limit_mb=1024 -print_final_stats=1)
    [ -f "dicts/$t.dict" ] && opts+=(-dict="dicts/$t.dict")
    if ! cargo "${tc[@]}" fuzz run "${flags[@]}" "$t" "$corpus" "${extra[@]}" -- \
        "${opts[@]}" 2>"$corpus.log"; then
        echo "error: fuzz target $t failed:" >&2
        # No such line when cargo itself failed: show the end instead.
        grep -E -A20 "panicked|ERROR|SUMMARY" "$corpus.log" | head -60 >&2 || tail -20 "$corpus.log" >&2
        rc=1
    fi
    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec" "$corpus.log" | sed "s/^/    /" || true
    rm -rf "$corpus" "$corpus.log"
done
echo "==> fuzzing took $((SECONDS - start)) s"
exit $rc
