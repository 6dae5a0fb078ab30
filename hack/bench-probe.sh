#!/usr/bin/env bash
# Measures the probe's overhead (needs root and a kernel that loads BPF tracepoints):
# alternating rounds with the probe detached (A), an empty program on the same hooks (F,
# the kernel's floor) and the probe attached (B) — open+close of a root-FS file, of an
# unwatched-tmpfs file, of a watched file by an allowed reader, and a 4 KiB pread — medians
# of thread CPU ns/op and the ratios; then a paced flood of flagged opens with rate
# limiting off, checking that every flagged open is delivered, dropped (counted per CPU)
# or rate-limited: zero unaccounted.
#
#   hack/bench-probe.sh                     # ROUNDS=15 ITERS=10000 RATE=100000 FLOOD=3s
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-probe: needs root (loads BPF, mounts tmpfs)" >&2; exit 1; }
mkdir -p bin
go build -o bin/probe-bench ./bpf/cmd/probe-bench
exec bin/probe-bench -attach "${ATTACH:-tracepoint}" -rounds "${ROUNDS:-15}" -iters "${ITERS:-10000}" \
  -flood-rate "${RATE:-100000}" -flood-for "${FLOOD:-3s}"
