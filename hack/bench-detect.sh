#!/usr/bin/env bash
# Times `sidekey detect image` against `gitleaks dir` (v8.30.1) in the same run, on a large
# image built from directories of this machine (default: the Go toolchain and /usr/share,
# about 1 GB) and on that image's flattened filesystem; prints wall times, peak RSS (from
# /usr/bin/time -v), the ratio, files/s and a findings-parity check.
#
#   hack/bench-detect.sh                       # full size
#   BENCH_DIRS=/usr/local/go/src hack/bench-detect.sh   # a quick run
#   BENCH_ARGS=-skip-gitleaks hack/bench-detect.sh      # sidekey only
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
go build -o "$out/sidekey" ./cmd/sidekey
gitleaks_dir=$(hack/testbin.sh gitleaks | tail -n1)
go run ./detector/bench -sidekey "$out/sidekey" -gitleaks "$gitleaks_dir/gitleaks" \
  -dirs "${BENCH_DIRS:-/usr/local/go,/usr/share}" ${BENCH_ARGS:-}
