#!/usr/bin/env bash
# Wheel smoke test: what a user who `pip install`s bankflow gets, used from a folder that is not the checkout.
#
# Builds the wheel from a copy of the source, installs it (not editable) with the `local` extra and constraints.txt
# into a new virtualenv outside the checkout, copies pipelines/ and banking_dbt/ into a fresh folder and runs
# validate, plan --out, generate, apply, verify and down there with that virtualenv's `bankflow`. A template or
# other run-time file missing from the wheel makes a step fail, and so this script (exit 1).
#
#   bash .ci/wheel_smoke.sh            (PYTHON=python3.x to choose the interpreter; KEEP=1 keeps the temp folder)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
spec=pipelines/banking.yaml

# The embedded PostgreSQL runs as `nobody` when we are root: it must be able to traverse to the venv (its binaries)
# and to the project (its cluster), or it relocates them under /var/tmp, where our clean-up would not reach.
work=$(mktemp -d "${TMPDIR:-/tmp}/bf-wheel.XXXXXX")
chmod 755 "$work"
venv=$work/venv
project=$work/project

cleanup() {
  local status=$?
  cd /
  # Stop the embedded PostgreSQL if a step failed before `down` (harmless when it is not running).
  if [ -x "$venv/bin/bankflow" ] && [ -d "$project" ]; then
    (cd "$project" && "$venv/bin/bankflow" down "$spec" >/dev/null 2>&1) || true
  fi
  # The CLI prints one line per error and writes the traceback under the state dir: show it before it goes.
  if [ "$status" -ne 0 ] && [ -d "$project/.bankflow/logs" ]; then
    for trace in "$project"/.bankflow/logs/*.traceback.txt; do
      [ -f "$trace" ] && { echo "--- $trace"; tail -n 40 "$trace"; } >&2
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    echo "wheel smoke: kept $work"
  else
    rm -rf "$work"
  fi
  if [ "$status" -ne 0 ]; then
    echo "wheel smoke: FAILED (exit $status)" >&2
  fi
}
trap cleanup EXIT

step() { printf '== wheel smoke: %s\n' "$*"; }
# pip's "Location ... is ignored" notes (a find-links setting) are noise; pipefail keeps pip's own exit status.
quiet() { grep -v 'is ignored' >&2 || true; }

# 1. Build from a copy of the sources (tracked and untracked-but-not-ignored files), so no build/ or egg-info
#    from an earlier build in the checkout can leak into the wheel, and the checkout stays untouched.
step "build the wheel"
mkdir "$work/src" "$work/dist"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # (a file deleted but not yet committed is listed too: skip it quietly)
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
     | tar --null --ignore-failed-read --warning=no-failed-read -T - -cf -) | tar -xf - -C "$work/src"
else
  cp -a "$repo/." "$work/src/"
  rm -rf "$work/src/.venv" "$work/src/build" "$work/src/dist" "$work/src"/*.egg-info
fi
# PIP_CONSTRAINT (unlike -c) also pins the build backend in pip's isolated build environment.
export PIP_CONSTRAINT=$repo/constraints.txt
"$python" -m pip wheel --quiet --no-deps "$work/src" -w "$work/dist" 2>&1 | quiet
wheel=$(ls "$work"/dist/bankflow-*.whl 2>/dev/null | head -n 1)
if [ -z "$wheel" ]; then
  echo "no wheel was built" >&2
  exit 1
fi
echo "$(basename "$wheel"): $("$python" -m zipfile -l "$wheel" | grep -c '\.j2 ') templates"

# 2. A new virtualenv outside the checkout, the wheel with the `local` extra, the pinned resolution.
step "install $(basename "$wheel")[local] into $venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet "${wheel}[local]" 2>&1 | quiet

# 3. A fresh folder holding only the spec and the dbt project; nothing from the checkout is importable there.
mkdir "$project"
cp -r "$repo/pipelines" "$repo/banking_dbt" "$project/"
rm -rf "$project/pipelines/.bankflow" "$project/banking_dbt/target" "$project/banking_dbt/logs"
cd "$project"
unset PYTHONPATH BANKFLOW_TEMPLATES BANKFLOW_STATE_DIR
export BANKFLOW_STATE_DIR=$project/.bankflow
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
where=$("$venv/bin/python" -c 'import bankflow; print(bankflow.__file__)')
echo "bankflow imported from $where"
case "$where" in
  "$site"/bankflow/*) ;;
  *) echo "bankflow is imported from $where, not from the new venv's $site" >&2; exit 1 ;;
esac
if "$venv/bin/python" -c 'import bankflow.lake._envelope' 2>/dev/null; then
  echo "C decoder: built"
else
  echo "C decoder: not built (no C compiler?); msgspec decodes instead"
fi

bankflow=$venv/bin/bankflow
step "bankflow validate $spec"
"$bankflow" validate "$spec"

step "bankflow plan $spec --out plan-out"
set +e
"$bankflow" plan "$spec" --out plan-out
status=$?
set -e
# plan exits 3 when it found differences (here: everything is new); anything but 0 or 3 is a failure.
case "$status" in
  0|3) echo "plan exited $status (0: nothing differs, 3: differences found; both are fine here)" ;;
  *) echo "plan exited $status" >&2; exit 1 ;;
esac
[ -n "$(ls -A plan-out 2>/dev/null)" ] || { echo "plan --out wrote nothing into plan-out/" >&2; exit 1; }

step "bankflow generate $spec --seed 42"
"$bankflow" generate "$spec" --seed 42

step "bankflow apply $spec"
"$bankflow" apply "$spec"

step "bankflow verify $spec"
"$bankflow" verify "$spec"

step "bankflow down $spec --destroy"
"$bankflow" down "$spec" --destroy  # as root the cluster lives under /var/tmp: leave nothing behind

step "passed"
