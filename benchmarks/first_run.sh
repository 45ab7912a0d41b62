#!/bin/bash
# `make demo` from nothing: a scratch copy of a commit (git archive), no .venv, timed to the end of
# the demo; prints a row of benchmarks/results/first_run.md. Costs minutes (torch is installed
# again) and gigabytes: run one commit at a time.   Usage: benchmarks/first_run.sh COMMIT
set -euo pipefail
commit=${1:?usage: benchmarks/first_run.sh COMMIT}
scratch=$(mktemp -d)
git archive "$commit" | tar -x -C "$scratch"
cd "$scratch"
start=$(date +%s.%N)
make demo > demo.log 2>&1
end=$(date +%s.%N)
packages=$(.venv/bin/pip list 2>/dev/null | tail -n +3 | wc -l)
size=$(du -sm .venv/lib/python3*/site-packages | cut -f1)
printf '| %s | %.0f s | %s | %s MB site-packages | %s |\n' "$(git -C "$OLDPWD" rev-parse --short "$commit")" \
    "$(echo "$end - $start" | bc)" "$packages" "$size" "$(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$scratch"
