#!/usr/bin/env bash
# Stage what gpu_check.sh needs into .gpu-data/ of a project checkout (ignored through .git/info/exclude):
# these scripts, a CIFAR-10 slice as npz, and pyautoattack's .py files (the GPU machine installs nothing
# from a registry; the package's wheel is 42 MB because of an example model, so only its code travels).
#   cd <project checkout> && bash scripts/gpu-check/prepare.sh [path/to/cifar10-npz-folder]
# pyautoattack is taken from the python in $PY (default: .venv/bin/python, else python3).
# At most 64 MiB may travel with the checkout: by default train-1.npz + test.npz (~56.5 MB) go;
# FILES="..." picks others. Then, on the GPU machine, from the checkout root: bash .gpu-data/gpu_check.sh
# (about 8 minutes: BUDGET=450 s of steps inside).
set -eu
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${1:-../shared/data/cifar10}
FILES=${FILES:-"train-1.npz test.npz"}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
[ -e .git ] || { echo "run this in the project checkout root" >&2; exit 1; }
EXCLUDE=$(git rev-parse --git-path info/exclude)   # a worktree's too
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.gpu-data/' "$EXCLUDE" 2>/dev/null || echo '/.gpu-data/' >> "$EXCLUDE"
rm -rf .gpu-data && mkdir -p .gpu-data/cifar10 .gpu-data/pylib
cp "$SELF"/gpu_check.sh "$SELF"/probe.py "$SELF"/summarize.py "$SELF"/run_to_file.py "$SELF"/train_result.py \
   "$SELF"/env_check.py .gpu-data/
for f in $FILES; do cp "$SRC/$f" .gpu-data/cifar10/; done
AA=$("$PY" -c "import os, pyautoattack; print(os.path.dirname(pyautoattack.__file__))" 2>/dev/null || true)
if [ -n "$AA" ]; then
  (cd "$(dirname "$AA")" && find pyautoattack -name '*.py' -not -path '*/examples/*' -print0 | \
     xargs -0 -I{} install -D -m 644 {} "$OLDPWD/.gpu-data/pylib/{}")
else
  echo "pyautoattack is not importable from $PY: the AutoAttack step will fail (install the project first)" >&2
fi
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
extra=$(du -sb .gpu-data | cut -f1)
total=$(( tree + extra )); limit=$(( 64 * 1024 * 1024 ))
echo "working tree ${tree} B + .gpu-data ${extra} B = ${total} B (limit ${limit} B)"
(( total < limit )) || { echo "too large to travel: drop a data file (FILES=...)" >&2; exit 1; }
