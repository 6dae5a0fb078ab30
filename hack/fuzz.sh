#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (default 10s).
set -euo pipefail
FUZZTIME=${FUZZTIME:-10s}
for pkg in $(go list ./...); do
  for f in $(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true); do
    echo "fuzz: $pkg $f ($FUZZTIME)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZTIME" "$pkg"
  done
done
