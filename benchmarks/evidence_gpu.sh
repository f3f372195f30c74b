#!/usr/bin/env bash
# The full-scale evidence of docs/benchmarks.md on one GPU machine (caps: about 11 minutes in all):
#   1. the main job's supernet (nas train-supernet spaces/psvit_tiny.yaml, the CPU recipe, device auto);
#   2. in parallel:
#      a. benchmarks/search_efficiency.py: evolution, Optuna TPE, random search x 5 seeds x 1,000 evaluations
#         at 1.3G on that supernet;
#      b. benchmarks/ats_trained.py (DeiT-Tiny retrained, ATS applied at keep 1.0/0.87/0.72/0.5; patch 4 for
#         30 epochs and the CPU recipe as it is, patch 8), then nas rank-check -n 12 --seeds 2, over the whole
#         MACs range and inside the band 1.15G:1.3G.
# Every piece is timed and capped (timeout); the search-efficiency summary is rewritten after every run, so a
# cap that cuts it short still leaves the runs finished so far (marked INCOMPLETE).
#
#   OUT=/tmp/evidence PY=.venv/bin/python bash benchmarks/evidence_gpu.sh
#
# PY: the python to use (default: python3); nas is imported from this checkout (PYTHONPATH), so it needs no
# install, only its dependencies: where optuna or mlxtend are missing and runs/wheels/ holds wheels of them
# (pip download, see the docs), they are installed into /tmp/site first. OUT (required): where the results go,
# as at most 5 files: evidence.md (every number, the timings, the machine), evidence.tar.gz (all CSV, JSON,
# markdown and logs; no weights) and the three plots. The run directories (weights, checkpoints) stay under
# RUNS (default runs/evidence-gpu): re-running the script resumes every piece. A smaller smoke run (e.g. on a CPU):
#   SEEDS=1 EVALS=20 RANK_N=3 RANK_ARGS="--recipe my_1_epoch.yaml" ATS_ARGS="--epochs 1" OUT=/tmp/ev bash ...
set -u
PY=${PY:-python3}
OUT=${OUT:?set OUT to the folder for the results}
RUNS=${RUNS:-runs/evidence-gpu}
SEEDS=${SEEDS:-5}
EVALS=${EVALS:-1000}
RANK_N=${RANK_N:-12}
RANK_ARGS=${RANK_ARGS:-}
DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
RES=$RUNS/results    # everything but weights; packed into $OUT at the end
mkdir -p "$OUT" "$RES"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TQDM_MININTERVAL=5
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import optuna, mlxtend, sqlalchemy" 2>/dev/null && ls runs/wheels/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site runs/wheels/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
NAS="$PY -m nas.cli"
T0=$SECONDS

step() {  # step NAME CAP_SECONDS COMMAND...: run, log to $RES/NAME.log, record the time and exit status
  local name=$1 cap=$2 t=$SECONDS rc
  shift 2
  timeout -k 10 "$cap" "$@" > "$RES/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc, $((SECONDS - t)) s (cap $cap s)" | tee -a "$RES/timings.txt"
  return $rc
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "$(nproc) CPUs"
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  git log -1 --format='commit %H %s' 2>/dev/null
} > "$RES/machine.txt" 2>&1
cat "$RES/machine.txt"
: > "$RES/timings.txt"

step supernet 240 $NAS train-supernet spaces/psvit_tiny.yaml --out "$RUNS/supernet" || { echo "no supernet"; exit 1; }

step search_efficiency 400 $PY benchmarks/search_efficiency.py --supernet "$RUNS/supernet" --seeds "$SEEDS" \
    --max-evals "$EVALS" --device "$DEVICE" --workers $((3 * SEEDS)) --batch-size 2000 --out "$RUNS/search-efficiency" \
    --png "$RES/search_efficiency.png" &
SE=$!

{
  step ats_trained 75 $PY benchmarks/ats_trained.py --out "$RUNS/ats-trained" ${ATS_ARGS:---epochs 30} &
  step ats_trained_p8 75 $PY benchmarks/ats_trained.py --patch 8 --out "$RUNS/ats-trained-p8" ${ATS_ARGS:-} &
  wait
  step rank_check 140 $NAS rank-check "$RUNS/supernet" -n "$RANK_N" --seeds 2 --workers 8 \
      --out "$RUNS/rank-check" $RANK_ARGS
  step rank_check_band 140 $NAS rank-check "$RUNS/supernet" -n "$RANK_N" --seeds 2 --workers 8 \
      --band 1.15G:1.3G --out "$RUNS/rank-check-band" $RANK_ARGS
} &
REST=$!
wait $SE $REST

# results (no weights) into $RES, then $OUT: evidence.md, evidence.tar.gz and the plots
cp "$RUNS/search-efficiency/"{summary.json,curves.csv,search_efficiency.md} "$RES/" 2>/dev/null
cp "$RUNS/ats-trained/"ats_trained.{md,json} "$RES/" 2>/dev/null
cp "$RUNS/ats-trained-p8/ats_trained.md" "$RES/ats_trained_p8.md" 2>/dev/null
cp "$RUNS/ats-trained-p8/ats_trained.json" "$RES/ats_trained_p8.json" 2>/dev/null
for rc in rank-check rank-check-band; do
  for f in csv json png; do cp "$RUNS/$rc/rank_check.$f" "$RES/${rc//-/_}.$f" 2>/dev/null; done
done
cp "$RUNS/supernet/train_log.csv" "$RES/supernet_train_log.csv" 2>/dev/null

{
  echo "# Evidence on $(sed -n 2p "$RES/machine.txt" | cut -d, -f1)"
  echo; echo '```'; cat "$RES/machine.txt"; cat "$RES/timings.txt"; echo "total: $((SECONDS - T0)) s"; echo '```'
  echo; echo "## Search efficiency"; echo; cat "$RES/search_efficiency.md" 2>/dev/null
  echo; echo '```'; grep -A4 "^target:" "$RES/search_efficiency.log" 2>/dev/null; echo '```'
  echo; echo "## ATS on a trained model"; echo; cat "$RES/ats_trained.md" 2>/dev/null
  echo; cat "$RES/ats_trained_p8.md" 2>/dev/null
  for rc in rank_check rank_check_band; do
    echo; echo "## $rc"; echo; echo '```'; tail -9 "$RES/$rc.log" 2>/dev/null; echo '```'
    echo; echo '```'; cat "$RES/$rc.csv" 2>/dev/null; echo '```'
  done
} > "$RES/evidence.md"
cp "$RES/evidence.md" "$OUT/"
for f in search_efficiency.png rank_check.png rank_check_band.png; do cp "$RES/$f" "$OUT/" 2>/dev/null; done
tar czf "$OUT/evidence.tar.gz" -C "$RES" .
cat "$OUT/evidence.md"
