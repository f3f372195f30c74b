#!/usr/bin/env bash
# A wheelhouse: the nas wheel and a wheel of every dependency in one folder, to install on machines without
# network (docs/distributed.md, "Installing without network"). Run it where the package registry is reachable:
#
#   bash scripts/wheelhouse.sh                       # for this machine: ./wheelhouse
#   bash scripts/wheelhouse.sh -o /shared/wheels --platform manylinux2014_x86_64 --python-version 3.11 \
#       -- --index-url https://download.pytorch.org/whl/cu121 --extra-index-url https://pypi.org/simple
#   bash scripts/wheelhouse.sh --dry-run --platform manylinux2014_x86_64 --python-version 3.11
#
# then, on the machine without network:
#
#   pip install --no-index --find-links /shared/wheels nas
#
# Options: -o DIR (default ./wheelhouse), --platform TAG and --python-version X.Y (wheels for another machine:
# binary wheels only, as pip requires), --extras dev (also the test tools), --dry-run (resolve every
# dependency for the target and list it, downloading no wheel but nas's own build), and after `--` any pip
# option (an --index-url with CUDA builds of torch). PYTHON picks the interpreter whose pip runs (default:
# .venv/bin/python if there, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out=wheelhouse platform=() extras="" dry_run=0 pip_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--out) out=$2; shift 2 ;;
    --platform) platform+=(--platform "$2"); shift 2 ;;
    --python-version) platform+=(--python-version "$2"); shift 2 ;;
    --extras) extras="[$2]"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; pip_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "wheelhouse: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
pip() { "$python" -m pip --disable-pip-version-check "$@"; }
binary=()
[ ${#platform[@]} -gt 0 ] && binary=(--only-binary=:all:)  # pip builds nothing for another platform

mkdir -p "$out"
echo "== the nas wheel -> $out"
pip wheel -q --no-deps -w "$out" .
wheel=$(ls -t "$out"/nas-*.whl | head -1)
echo "$wheel"

if [ "$dry_run" = 1 ]; then
  echo "== dependencies of ${wheel##*/}$extras${platform[*]:+ for ${platform[*]}} (dry run: nothing downloaded)"
  report=$(mktemp)
  trap 'rm -f "$report"' EXIT
  pip install -q --dry-run --ignore-installed --target "$(dirname "$report")/nas-wheelhouse-dry-run" \
    "${platform[@]}" "${binary[@]}" --report "$report" "${pip_args[@]}" "$wheel$extras"
  "$python" - "$report" <<'EOF'
import json, sys
items = json.load(open(sys.argv[1]))["install"]
for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
    meta, url = item["metadata"], item["download_info"]["url"]
    print(f"{meta['name']}=={meta['version']}  {url.rsplit('/', 1)[-1]}")
print(f"{len(items)} packages")
EOF
  exit 0
fi

echo "== every dependency -> $out"
pip download -q -d "$out" "${platform[@]}" "${binary[@]}" "${pip_args[@]}" "$wheel$extras"
echo "== $(ls "$out" | wc -l) files in $out; install without network with:"
echo "   pip install --no-index --find-links $out 'nas$extras'"
