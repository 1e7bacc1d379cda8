#!/usr/bin/env bash
# Mutation check (tests/MUTATION.md): mutate one source file with mutmut in a copy of the
# working tree under /tmp (the checkout itself is never mutated) and run its test subset
# against every mutant.
#
#   tests/mutation.sh edits|hooks|sites|views|metrics|dla|topk [more...]
#
# Needs mutmut (`pip install -e ".[dev]"`, or MUTMUT_PATH=folder-with-mutmut on PYTHONPATH).
# Results: /tmp/mechscope-mutation/NAME/ (`python -m mutmut results` / `show MUTANT` there).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
declare -A file tests
file[edits]=edits.py
tests[edits]="tests/test_edits.py tests/test_errors.py tests/oracles/test_padded_edits.py tests/oracles/test_edit_ops.py"
file[hooks]=hooks.py
tests[hooks]="tests/test_edits.py tests/test_errors.py tests/oracles/test_padded_edits.py tests/oracles/test_hooks_by_hand.py tests/patching/test_shared.py"
file[sites]=sites.py
tests[sites]="tests/test_errors.py tests/oracles/test_sites_by_hand.py"
file[views]=views.py
tests[views]="tests/test_errors.py tests/oracles/test_sites_by_hand.py"
file[metrics]=patching/metrics.py
tests[metrics]="tests/oracles/test_metrics_by_hand.py"
file[dla]=attribution/dla.py
tests[dla]="tests/oracles/test_dla_by_hand.py tests/attribution/test_dla.py"
file[topk]=dictionary/topk.py
tests[topk]="tests/dictionary/test_topk_fast.py tests/oracles/test_auxk_by_hand.py"

for name in "$@"; do
  [[ -n "${file[$name]:-}" ]] || { echo "unknown target '$name': choose from ${!file[*]}" >&2; exit 2; }
  work=/tmp/mechscope-mutation/$name
  rm -rf "$work" && mkdir -p "$work"
  (cd "$root" && git ls-files -co --exclude-standard -z | grep -zv '^\.venv/' | tar --null -T - -c) | tar -x -C "$work"
  selection=$(printf '"%s", ' ${tests[$name]})
  cat >> "$work/pyproject.toml" <<EOT

[tool.mutmut]
source_paths = ["src/mechscope"]
only_mutate = ["src/mechscope/${file[$name]}"]
pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = [${selection%, }]
also_copy = ["tests"]
EOT
  echo "== $name: mutating src/mechscope/${file[$name]} in $work"
  (cd "$work" && OMP_NUM_THREADS=1 PYTHONPATH="${MUTMUT_PATH:-}" "$python" -m mutmut run --max-children 1 > run.log 2>&1) || true
  (cd "$work" && PYTHONPATH="${MUTMUT_PATH:-}" "$python" -m mutmut results --all true > results.txt 2>&1) || true
  killed=$(grep -c ': killed$' "$work/results.txt" || true)
  total=$(grep -c ': ' "$work/results.txt" || true)
  echo "$name: $killed of $total mutants killed (survivors: grep -v killed $work/results.txt)"
done
