#!/usr/bin/env bash
# The main job on the built-in offline data. Today it stops at what exists: validate and cost the PSViT
# space, sample from it and cost the reference architectures. `nas search` (supernet training + evolution)
# is the roadmap's next step (design.md) and will replace this script's body.
set -euo pipefail
nas() { .venv/bin/nas "$@"; }
echo "== nas space show spaces/psvit_tiny.yaml"
nas space show spaces/psvit_tiny.yaml
echo
echo "== nas space sample spaces/psvit_tiny.yaml -n 3 --out runs/demo-samples"
nas space sample spaces/psvit_tiny.yaml -n 3 --seed 0 --out runs/demo-samples
echo
echo "== nas flops on the reference architectures (MACs at 224x224, fvcore convention)"
for f in spaces/reference/*.yaml; do
  printf '%-45s ' "$f"; nas flops "$f"
done
echo
echo "Search itself (nas search spaces/psvit_tiny.yaml --flops 1.3G) is not built yet: see the issues."
