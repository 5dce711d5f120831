#!/usr/bin/env bash
# tools/test.sh — the whole test suite: set up (idempotent), then the Criterion
# suites in the release build, then the same suites built with
# -Db_sanitize=address,undefined (aborting on the first report).
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

run_suite() {  # run_suite BUILDDIR LABEL [meson test args...]
  local dir=$1 label=$2; shift 2
  local t0=$SECONDS
  if meson test -C "$dir" --num-processes "$jobs" --print-errorlogs "$@"; then
    summary+=("$label: ok ($((SECONDS - t0)) s)")
  else
    summary+=("$label: FAILED ($((SECONDS - t0)) s)")
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
fi

# Totals over every suite run above, as one closing line.
pass=0; fail=0
for log in build/meson-logs/testlog.txt build-asan/meson-logs/testlog.txt; do
  [ -f "$log" ] || continue
  p=$(grep -cE '^ *[0-9]+/[0-9]+ .* OK ' "$log" || true)
  f=$(grep -cE '^ *[0-9]+/[0-9]+ .* (FAIL|TIMEOUT|ERROR) ' "$log" || true)
  pass=$((pass + p)); fail=$((fail + f))
done
printf '%s\n' "${summary[@]}"
echo "$pass passed, $fail failed"
exit $status
