#!/usr/bin/env bash
# Lists handoff's fuzz targets as package:FuzzName, one a line, for
# scripts/test.sh (a short run of each) and `make fuzz` (a longer one).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -rlE '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' --include='*_test.go' internal cmd 2>/dev/null | sort | while read -r file; do
  for name in $(grep -oE '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
    echo "$(dirname "$file"):$name"
  done
done
