#!/usr/bin/env bash
# Regenerate constraints.txt: resolve `pip install -e '.[dev]'` once per Python version in a throw-away virtualenv
# (with the newest pip, whose resolver gets there quickly), `pip freeze` each, and merge them into one file with
# `python_version` markers where the versions differ.
#
#   bash .ci/update_constraints.sh python3.10 python3.11          resolve and write constraints.txt
#   bash .ci/update_constraints.sh --merge 3.10=f1.txt 3.11=f2.txt merge freezes made elsewhere
#
# Give the Python versions in increasing order; the newest one's pins also hold for every later version.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bf-constraints.XXXXXX")
trap 'rm -rf "$work"' EXIT

# pip's "Location ... is ignored" notes (a find-links setting) are noise; pipefail keeps pip's own exit status.
quiet() { grep -v 'is ignored' >&2 || true; }

freezes=()
if [ "${1:-}" = "--merge" ]; then
  shift
  freezes=("$@")
else
  for python in "$@"; do
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "== resolving on Python $version" >&2
    "$python" -m venv "$work/venv-$version"
    "$work/venv-$version/bin/pip" install --quiet --upgrade pip 2>&1 | quiet
    (cd "$repo" && "$work/venv-$version/bin/pip" install --quiet -e '.[dev]' 2>&1 | quiet)
    "$work/venv-$version/bin/pip" freeze --exclude-editable 2>/dev/null | grep -v '^bankflow==' > "$work/$version.txt"
    freezes+=("$version=$work/$version.txt")
  done
fi
[ "${#freezes[@]}" -gt 0 ] || { echo "usage: $0 PYTHON... | --merge VERSION=FREEZE..." >&2; exit 2; }

python3 - "$repo/constraints.txt" "${freezes[@]}" <<'EOF'
import sys

out, *args = sys.argv[1:]
versions, pins = [], []          # pins[i]: {canonical name: "Name==1.2"} of versions[i]
for arg in args:
    version, path = arg.split("=", 1)
    entries = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith(("#", "-e")) and "==" in line:
            entries[line.split("==")[0].lower().replace("_", "-").replace(".", "-")] = line
    versions.append(version)
    pins.append(entries)

def marker(i: int) -> str:
    """python_version range in which versions[i]'s pins apply (the last one is open-ended)."""
    lower = f'python_version >= "{versions[i]}"' if i > 0 else ""
    upper = f'python_version < "{versions[i + 1]}"' if i + 1 < len(versions) else ""
    return " and ".join(p for p in (lower, upper) if p)

lines = []
for name in sorted(set().union(*pins)):
    chosen = [p.get(name) for p in pins]
    if len(set(chosen)) == 1:
        lines.append(chosen[0])
        continue
    for i, pin in enumerate(chosen):
        if pin:
            lines.append(f"{pin}; {marker(i)}")

text = open(out).read() if __import__("os").path.exists(out) else ""
header = text.split("\n# --- resolved pins", 1)[0].rstrip("\n") if text else "# constraints"
with open(out, "w") as f:
    f.write(header + "\n# --- resolved pins (.ci/update_constraints.sh on Python " + ", ".join(versions) + ")\n")
    f.write("\n".join(lines) + "\n")
print(f"{out}: {len(lines)} pins for Python {', '.join(versions)}", file=sys.stderr)
EOF
