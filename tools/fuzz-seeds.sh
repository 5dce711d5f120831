#!/usr/bin/env bash
# Seed corpora for the libFuzzer harnesses (tests/fuzz), written under
# OUT/<harness>/: the real manifests of the repository, and small valid
# IDX / CIFAR-10 / .npy files made here (nothing binary is committed).
#   tools/fuzz-seeds.sh OUT
set -euo pipefail
OUT=${1:?usage: tools/fuzz-seeds.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for t in manifest override npy mnist mnist_gz cifar10; do mkdir -p "$OUT/$t"; done

# Manifests: experiments, their models, the test manifests.
i=0
while IFS= read -r f; do
    cp "$f" "$OUT/manifest/seed-$i-$(basename "$f")"
    i=$((i + 1))
done < <(find "$ROOT/experiments" "$ROOT/tests/core/manifests" "$ROOT/tests/cli/manifests" \
              -name '*.yaml' -size -20k | sort)

# Overrides: one per line, as on the command line.
printf 'distill.steps=5\nobservable.trainable=false\n' > "$OUT/override/seed-0"
printf 'train.lr=0.05\nseed=7\nthreads=1\n' > "$OUT/override/seed-1"
printf 'model.layers.conv1.kernel=3\ndataset.subset=100\n' > "$OUT/override/seed-2"
printf 'observable.matrix=[[1, 0], [0, -1]]\nencoder.plugin=angle\n' > "$OUT/override/seed-3"
printf 'model.layers.0.out_channels=4\nevaluate.models=2\ndistill.init=real\n' > "$OUT/override/seed-4"
printf 'dataset={plugin: synthetic}\nname=x\n' > "$OUT/override/seed-5"

python3 - "$OUT" <<'PY'
import gzip, struct, sys
out = sys.argv[1]

def w(path, data):
    with open(path, 'wb') as f:
        f.write(data)

# IDX images: magic 0x803, n, rows, cols, then n*rows*cols bytes.
def idx(n, r, c):
    return struct.pack('>IIII', 0x803, n, r, c) + bytes((i * 37) % 256 for i in range(n * r * c))

for k, (n, r, c) in enumerate([(1, 2, 2), (2, 4, 4), (3, 5, 7), (10, 28, 28)]):
    im = idx(n, r, c)
    w(f'{out}/mnist_gz/seed-{k}', im)              # the harness gzips it
    w(f'{out}/mnist/seed-raw-{k}', b'\x00' + im)     # even first byte: raw file
    w(f'{out}/mnist/seed-gz-{k}', b'\x01' + gzip.compress(im, mtime=0))  # odd: named .gz

# CIFAR-10: records of 1 label byte + 3072 pixel bytes.
def rec(label):
    return bytes([label]) + bytes((i * 11 + label) % 256 for i in range(3072))
w(f'{out}/cifar10/seed-1', rec(3))
w(f'{out}/cifar10/seed-2', rec(0) + rec(9))

# .npy v1.0 / v2.0: magic, version, header length, dict padded to 64.
def npy(descr, shape, payload, major=1):
    # numpy's repr of the shape tuple: (), (4,), (2, 3)
    sh = f'({shape[0]},)' if len(shape) == 1 else '(' + ', '.join(map(str, shape)) + ')'
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, sh)
    pre = 10 if major == 1 else 12
    pad = (64 - (pre + len(d) + 1) % 64) % 64
    h = (d + ' ' * pad + '\n').encode()
    ln = struct.pack('<H', len(h)) if major == 1 else struct.pack('<I', len(h))
    return b'\x93NUMPY' + bytes([major, 0]) + ln + h + payload

w(f'{out}/npy/seed-f8', npy('<f8', [2, 3], struct.pack('<6d', *range(6))))
w(f'{out}/npy/seed-i4', npy('<i4', [4], struct.pack('<4i', 1, -2, 3, -4)))
w(f'{out}/npy/seed-i8', npy('<i8', [1, 1, 2], struct.pack('<2q', 5, 6)))
w(f'{out}/npy/seed-u1', npy('|u1', [3, 2], bytes(range(6))))
w(f'{out}/npy/seed-scalar', npy('<f8', [], struct.pack('<d', 1.5)))
w(f'{out}/npy/seed-v2', npy('<f8', [2], struct.pack('<2d', 0.5, 2.0), major=2))
w(f'{out}/npy/seed-empty', npy('<i4', [0, 3], b''))
PY
