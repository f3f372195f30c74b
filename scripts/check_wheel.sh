#!/usr/bin/env bash
# The wheel works on its own: build it from this checkout, install it into a fresh virtual environment outside
# the checkout, and run the shipped spaces and recipes by name from another folder (no checkout on the path).
#   bash scripts/check_wheel.sh            # uses .venv (make install); VENV=/path/to/venv to use another
# Nothing is downloaded: the wheel is built without build isolation (setuptools >= 70.1 in the venv, the `dev`
# extra), and the new environment reuses the venv's installed dependencies through a .pth file; the checkout's
# editable `nas` is not on its path (a .pth line adds a folder, it does not run that folder's .pth files).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
venv=$(cd "${VENV:-.venv}" && pwd)
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
unset PYTHONPATH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { echo "== $*"; }

step "build the wheel"
"$venv/bin/python" -c 'import setuptools, sys; v = tuple(int(p) for p in setuptools.__version__.split(".")[:2]);
sys.exit(0 if v >= (70, 1) else f"setuptools {setuptools.__version__} in the venv: need >= 70.1 (pip install -e .[dev])")'
rm -rf build  # setuptools' staging folder: a file left there from an earlier build would go into this wheel
"$venv/bin/pip" wheel --disable-pip-version-check -q --no-deps --no-build-isolation -w "$tmp/dist" .
wheel=$(ls "$tmp"/dist/nas-*.whl)
echo "$wheel"

step "install it into a fresh venv in $tmp, dependencies from $venv"
"$venv/bin/python" -m venv --without-pip "$tmp/venv"
py="$tmp/venv/bin/python"
"$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])' \
  | sort -u > "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nas-deps.pth"
"$py" -m pip install --disable-pip-version-check -q --no-deps --no-index --ignore-installed "$wheel"  # not the venv's nas

cd "$tmp"  # not the checkout: nothing of it can be found from here
nas() { "$tmp/venv/bin/nas" "$@"; }
where=$("$py" -c 'import nas; print(nas.__file__)')
case "$where" in
  "$tmp/venv/"*) echo "nas imported from $where" ;;
  *) echo "check_wheel: nas imported from $where, not from the wheel installed in $tmp/venv" >&2; exit 1 ;;
esac

step "nas space list"
nas space list
step "nas recipe list"
nas recipe list
step "nas space show psvit_tiny"
nas space show psvit_tiny
step "nas flops reference/deit_tiny"
nas flops reference/deit_tiny

step "a tiny search on synthetic data: psvit_tiny by name, a 16 px proxy recipe written here, search_random by name"
cat > tiny.yaml <<'EOF'
name: check_wheel
epochs: 1
batch_size: 16
optimizer: {name: adamw, lr: 1e-3, weight_decay: 0.05}
schedule: {name: none}
label_smoothing: 0.0
data: {holdout: 0.5}
device: cpu
space_overrides:
  input.size: 16
  tokenizer.patch_size: 4
  stages[0].dim: 16
  stages[0].heads: 2
  stages[1].dim: {choice: [16, 24]}
  stages[1].heads: {choice: [2, 4]}
  stages[2].dim: 32
  stages[2].heads: 2
EOF
nas search psvit_tiny --flops 1.3G --data synthetic:64 --recipe tiny.yaml --search-recipe search_random \
  --max-evals 4 --out run
step "nas eval of the winner (re-loads the space run.json names, psvit_tiny, to map the arch to the proxy)"
nas eval run/best.yaml --supernet run/supernet
test "$checkout" != "$PWD"
echo "check_wheel: ok"
