#!/usr/bin/env bash
# What an input of the engine fuzz target costs, against the target as it
# was before issue 13 (one engine built per input, every request signed
# through the `stun` crate), both built with the same flags and run side by
# side, one per core, so that the machine's noise falls on both alike.
#
#   1. The same inputs: a corpus made by fuzzing the current target for
#      $SECONDS_GEN s (inputs up to 256 bytes, as CI runs it) is replayed
#      $REPLAYS times by each build. Both harnesses read an input alike (the
#      first byte of each 0xFE-separated chunk picks the client and whether
#      the rest is signed), so the ratio is what one input costs.
#   2. Fuzzing as each is run: the old target as the issue ran it (fresh
#      corpus, libFuzzer's default input length), the current one as
#      tests/fuzz.sh runs it (-max_len=256), for $SECONDS_RUN s each.
#
# Usage: bash fuzz/bench.sh [--asan] [--base COMMIT]
#   --asan    build both with cargo fuzz's defaults (AddressSanitizer), as
#             the issue measured 2,600 inputs/s; otherwise CI's flags
#             (-O -a -s none)
#   --base    the commit of the old target (default d33de66, the last
#             before issue 13 changed the harness)
# Needs git history (a clone, not an export), nightly Rust and cargo-fuzz
# (tests/fuzz.sh installs it).
set -euo pipefail

base=d33de66
flags=(-O -a -s none)
kind=ci
while [ $# -gt 0 ]; do
    case $1 in
    --asan) flags=(); kind=asan ;;
    --base) base=$2; shift ;;
    *) echo "usage: bash fuzz/bench.sh [--asan] [--base COMMIT]" >&2; exit 2 ;;
    esac
    shift
done
SECONDS_GEN=${SECONDS_GEN:-30}
SECONDS_RUN=${SECONDS_RUN:-60}
REPLAYS=${REPLAYS:-50}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ferroturn
tc=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    tc=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
host=$(rustc -vV | sed -n 's/^host: //p')

# The old target, from its own worktree, with today's lock file so that
# both link the same versions of every dependency.
old_src=$cache/bench-base-$base
if [ ! -d "$old_src" ]; then
    git -C "$repo" worktree add --detach "$old_src" "$base" >/dev/null
fi
cp "$repo/fuzz/Cargo.lock" "$old_src/fuzz/Cargo.lock"
old_target=$cache/fuzz-bench-base-$kind
new_target=$cache/fuzz-bench-$kind
echo "==> building the engine target at $base and at the working tree ($kind flags)"
(cd "$old_src/fuzz" && cargo "${tc[@]}" fuzz build "${flags[@]}" --target-dir "$old_target" engine 2>&1 | tail -1)
(cd "$repo/fuzz" && cargo "${tc[@]}" fuzz build "${flags[@]}" --target-dir "$new_target" engine 2>&1 | tail -1)
old=$old_target/$host/release/engine
new=$new_target/$host/release/engine

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/inputs" "$work/c-old" "$work/c-new"
echo "==> making inputs: $SECONDS_GEN s of the current target, -max_len=256"
"$new" -max_total_time="$SECONDS_GEN" -max_len=256 -seed=1 "$work/inputs" >/dev/null 2>&1
n=$(ls "$work/inputs" | wc -l)
bytes=$(cat "$work/inputs"/* | wc -c)
echo "    $n inputs, $((bytes / n)) bytes on average"

# Replay every input $REPLAYS times; prints the wall time in ms.
replay() {
    local s e
    s=$(date +%s%N)
    (cd "$work/inputs" && "$1" -runs="$REPLAYS" * >/dev/null 2>&1)
    e=$(date +%s%N)
    echo $(((e - s) / 1000000))
}
echo "==> replaying each input $REPLAYS times, both builds side by side"
replay "$old" >"$work/t-old" &
p=$!
replay "$new" >"$work/t-new"
wait $p
t_old=$(cat "$work/t-old")
t_new=$(cat "$work/t-new")
runs=$((n * REPLAYS))
echo "    old: $runs inputs in $t_old ms ($((runs * 1000 / t_old)) inputs/s)"
echo "    new: $runs inputs in $t_new ms ($((runs * 1000 / t_new)) inputs/s)"
echo "    one input costs the new target $(awk "BEGIN{printf \"%.2f\", $t_new/$t_old}") of the old (old/new = $(awk "BEGIN{printf \"%.1f\", $t_old/$t_new}")x)"

echo "==> fuzzing $SECONDS_RUN s each, side by side: old as the issue ran it, new as CI runs it"
"$old" -max_total_time="$SECONDS_RUN" -rss_limit_mb=2048 -print_final_stats=1 "$work/c-old" >"$work/f-old" 2>&1 &
p=$!
"$new" -max_total_time="$SECONDS_RUN" -rss_limit_mb=2048 -print_final_stats=1 -max_len=256 "$work/c-new" >"$work/f-new" 2>&1
wait $p
for w in old new; do
    e=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/f-$w")
    r=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/f-$w")
    l=$(grep -E "^#[0-9]+" "$work/f-$w" | tail -1 | grep -oE "lim: [0-9]+" || true)
    echo "    $w: $e inputs, $r inputs/s ($l)"
    eval "rate_$w=$r"
done
echo "    inputs/s new/old = $(awk "BEGIN{printf \"%.1f\", $rate_new/$rate_old}")x; one CI minute of the new target: $((rate_new * 60)) inputs"
