#!/usr/bin/env bash
# Run every libFuzzer harness (tests/fuzz) for SECONDS each, one after the
# other, nice'd, and print a table of executions and crashes.
#
#   tools/fuzz.sh [SECONDS]          (default 60)
#
# Configures and builds build-fuzz (clang, ASan+UBSan, -Dfuzz=true) when
# needed. The corpus grows in build-fuzz/fuzz/corpus/<harness> across runs
# (seeded by tools/fuzz-seeds.sh). Per harness the executions, coverage,
# corpus size, crashes and seconds are printed as soon as it finishes and
# recorded in build-fuzz/fuzz/summary.tsv (tools/test.sh counts them). A
# crash input is kept in build-fuzz/fuzz/crashes/<harness>/ (never cleaned),
# named in the output, and printed as base64 so a CI log alone reproduces it
# (base64 -d > input; build/tests/test_fuzz_regressions or the harness).
# Exits 1 when any harness crashed, 2 on a build or setup problem. Needs no
# stdin (CI=true ok). Environment: QD_FUZZ_BUILD (build dir), QD_FUZZ_ONLY
# (space-separated subset of harnesses).
set -uo pipefail

SECS=${1:-60}
case $SECS in '' | *[!0-9]*) echo "usage: tools/fuzz.sh [SECONDS]" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${QD_FUZZ_BUILD:-$ROOT/build-fuzz}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac   # the harnesses run elsewhere
HARNESSES=${QD_FUZZ_ONLY:-"manifest override npy mnist mnist_gz cifar10"}
T0=$(date +%s)
rm -f "$BUILD/fuzz/summary.tsv"   # a failed build leaves no stale summary

# max_len per harness: manifests/overrides are text of a few KB; IDX and
# CIFAR need room for a couple of small images / records.
max_len() {
    case $1 in
        manifest) echo 16384 ;;
        override) echo 2048 ;;
        npy) echo 4096 ;;
        mnist | mnist_gz) echo 8192 ;;
        cifar10) echo 9300 ;;   # three 3073-byte records
    esac
}

if [ ! -f "$BUILD/build.ninja" ]; then
    echo "== configuring $BUILD"
    CC=clang nice meson setup "$BUILD" "$ROOT" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Dtests=false -Dbenchmarks=false -Dwerror=false \
        -Dbuildtype=debugoptimized </dev/null || exit 2
fi
echo "== building $BUILD"
nice ninja -C "$BUILD" </dev/null >"$BUILD/fuzz-build.log" 2>&1 || {
    tail -40 "$BUILD/fuzz-build.log"
    echo "fuzz.sh: build failed (log: $BUILD/fuzz-build.log)" >&2
    exit 2
}

WORK=$BUILD/fuzz
mkdir -p "$WORK/corpus" "$WORK/out" "$WORK/tmp" "$WORK/crashes"
SUMMARY=$WORK/summary.tsv
printf 'harness\texecutions\tcoverage\tcorpus\tcrashes\tseconds\n' >"$SUMMARY"
SEEDS=$WORK/seeds
rm -rf "$SEEDS"
"$ROOT/tools/fuzz-seeds.sh" "$SEEDS" || { echo "fuzz.sh: seed generation failed" >&2; exit 2; }

export QDISTILL_PLUGIN_PATH=$BUILD/plugins
export QD_TEST_SRCDIR=$ROOT
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}

rows=()
crashed=0
for h in $HARNESSES; do
    exe=$BUILD/tests/fuzz/fuzz_$h
    if [ ! -x "$exe" ]; then
        echo "fuzz.sh: no harness $exe" >&2
        exit 2
    fi
    out=$WORK/out/$h
    corpus=$WORK/corpus/$h
    rm -rf "$out" "$WORK/tmp/$h"
    mkdir -p "$out" "$corpus" "$WORK/tmp/$h"
    echo "== fuzz_$h: ${SECS}s, max_len $(max_len "$h")"
    t_h=$(date +%s)
    # New units go to the first corpus dir; the seeds are read each run.
    (cd "$out" && TMPDIR=$WORK/tmp/$h nice "$exe" "$corpus" "$SEEDS/$h" \
        -max_total_time="$SECS" -max_len="$(max_len "$h")" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$out/" </dev/null >"$out/log" 2>&1)
    rc=$?
    rm -rf "$WORK/tmp/$h"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/log" | tail -1)
    n_art=$(find "$out" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' \
            -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [ "$rc" -ne 0 ] && [ "$n_art" -eq 0 ]; then
        n_art=1   # died without an artifact (e.g. setup failure): count it
    fi
    cov=$(grep -o 'cov: [0-9]*' "$out/log" | tail -1 | cut -d' ' -f2)
    units=$(find "$corpus" -type f | wc -l)
    secs_h=$(( $(date +%s) - t_h ))
    rows+=("$(printf '%-10s %12s %8s %8s %8s' "$h" "${execs:-?}" "${cov:-?}" "$units" "$n_art")")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "${execs:-0}" "${cov:-0}" "$units" "$n_art" \
        "$secs_h" >>"$SUMMARY"
    echo "   fuzz_$h: ${execs:-?} executions, coverage ${cov:-?}, corpus $units, $n_art crash(es), ${secs_h}s"
    if [ "$n_art" -gt 0 ]; then
        crashed=1
        echo "   fuzz_$h FAILED (exit $rc), log: $out/log"
        grep -m3 -E 'ERROR: |runtime error|^fuzz: ' "$out/log" | sed 's/^/   /'
        # Keep every artifact where the next run does not clean, and put it
        # in the log itself (inputs are at most max_len bytes).
        mkdir -p "$WORK/crashes/$h"
        while IFS= read -r a; do
            kept=$WORK/crashes/$h/$(basename "$a")
            cp "$a" "$kept"
            echo "   crash input: $kept ($(stat -c %s "$kept") bytes)"
            echo "   crash input (base64): $(base64 -w0 "$kept")"
        done < <(find "$out" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' \
                    -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
    fi
done

echo
printf '%-10s %12s %8s %8s %8s\n' harness executions coverage corpus crashes
for r in "${rows[@]}"; do echo "$r"; done
echo "wall time: $(( $(date +%s) - T0 ))s (summary: $SUMMARY)"
if [ "$crashed" -ne 0 ]; then
    echo "fuzz.sh: crashes found (kept in $WORK/crashes/); add the inputs to" \
        "tests/fuzz/regressions/<harness>/ and fix the bug" >&2
    exit 1
fi
exit 0
