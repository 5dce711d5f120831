#!/usr/bin/env bash
# tools/test.sh — the whole test suite: set up (idempotent), then the Criterion
# suites in the release build, then the same suites built with
# -Db_sanitize=address,undefined (aborting on the first report), then the CLI
# end-to-end tests under valgrind memcheck.
#
#   tools/test.sh              everything
#   QD_TEST_QUICK=1 tools/test.sh   release build only
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
fi

# Totals over every suite run above, counted in Criterion test cases (each
# meson test is one Criterion suite reporting "N subtests passed").
pass=0; fail=0
for log in "${logs[@]}"; do
  p=$(grep -oE '[0-9]+ subtests passed' "$log" | awk '{s += $1} END {print s + 0}')
  f=$(grep -cE '^ *[0-9]+/[0-9]+ .* (FAIL|TIMEOUT|ERROR) ' "$log" || true)
  pass=$((pass + p)); fail=$((fail + f))
done
printf '%s\n' "${summary[@]}"
echo "$pass passed, $fail failed"
exit $status
