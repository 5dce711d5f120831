#!/usr/bin/env bash
# tools/test.sh — the whole test suite: set up (idempotent), then the Criterion
# suites in the release build, then the same suites built with
# -Db_sanitize=address,undefined (aborting on the first report), then the CLI
# end-to-end tests under valgrind memcheck, then every libFuzzer harness for
# 60 s (tools/fuzz.sh; each harness counts as one case, a crash fails).
#
#   tools/test.sh              everything
#   QD_TEST_QUICK=1 tools/test.sh   release build only
#   QD_FUZZ_SECONDS=N tools/test.sh   fuzz each harness N s (default 60)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

"$root/tools/setup.sh"

jobs=${QD_TEST_JOBS:-2}
status=0
summary=()

logs=()
run_suite() {  # run_suite BUILDDIR LABEL [meson test args...]
  local dir=$1 label=$2; shift 2
  local t0=$SECONDS log="$dir/meson-logs/console-${label//[^a-z]/_}.txt"
  mkdir -p "$dir/meson-logs"
  if meson test -C "$dir" --num-processes "$jobs" --print-errorlogs "$@" 2>&1 | tee "$log"; then
    summary+=("$label: ok ($((SECONDS - t0)) s)")
  else
    summary+=("$label: FAILED ($((SECONDS - t0)) s)")
    status=1
  fi
  logs+=("$log")
}

# Every harness for SECONDS (tools/fuzz.sh builds build-fuzz when needed);
# its per-harness summary.tsv gives the cases: 0 crashes passed, else failed.
fuzz_pass=0; fuzz_fail=0
run_fuzz() {
  local secs=$1 t0=$SECONDS log=build/meson-logs/console-fuzz.txt rc=0
  mkdir -p build/meson-logs
  tools/fuzz.sh "$secs" </dev/null 2>&1 | tee "$log" || rc=$?
  local tsv=build-fuzz/fuzz/summary.tsv
  if [ -f "$tsv" ]; then
    fuzz_pass=$(awk -F'\t' 'NR > 1 && $5 == 0' "$tsv" | wc -l)
    fuzz_fail=$(awk -F'\t' 'NR > 1 && $5 != 0' "$tsv" | wc -l)
  fi
  if [ "$rc" -eq 0 ]; then
    summary+=("fuzz ($fuzz_pass harnesses x ${secs} s): ok ($((SECONDS - t0)) s)")
  elif [ "$fuzz_fail" -gt 0 ]; then
    summary+=("fuzz: FAILED ($((SECONDS - t0)) s; $fuzz_fail harness(es) crashed, inputs in build-fuzz/fuzz/crashes/, see $log)")
    status=1
  else
    fuzz_fail=1   # build or setup problem: no harness ran to the end
    summary+=("fuzz: FAILED ($((SECONDS - t0)) s; build or setup problem, see $log)")
    status=1
  fi
}

run_suite build release

if [ -z "${QD_TEST_QUICK:-}" ]; then
  if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
      --buildtype=debugoptimized -Dbenchmarks=false >/dev/null
  fi
  ninja -C build-asan >/dev/null || { ninja -C build-asan; exit 1; }
  # Plugins stay mapped at exit so leak reports can name their frames.
  QD_KEEP_PLUGINS=1 run_suite build-asan "address,undefined"
  # The CLI end-to-end tests with every qdistill process under valgrind memcheck.
  run_suite build "valgrind (cli)" --setup valgrind cli
  run_fuzz "${QD_FUZZ_SECONDS:-60}"
fi

# Totals over every suite run above, counted in Criterion test cases (each
# meson test is one Criterion suite reporting "N subtests passed").
pass=0; fail=0
for log in "${logs[@]}"; do
  p=$(grep -oE '[0-9]+ subtests passed' "$log" | awk '{s += $1} END {print s + 0}')
  f=$(grep -cE '^ *[0-9]+/[0-9]+ .* (FAIL|TIMEOUT|ERROR) ' "$log" || true)
  pass=$((pass + p)); fail=$((fail + f))
done
pass=$((pass + fuzz_pass)); fail=$((fail + fuzz_fail))
printf '%s\n' "${summary[@]}"
echo "$pass passed, $fail failed"
exit $status
