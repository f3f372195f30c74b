#!/usr/bin/env bash
# The full-scale evidence of docs/benchmarks.md on one GPU machine, in about 7 minutes:
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
# PY: the python with nas installed (default: python). OUT (required): where the results go (CSV, JSON, PNG,
# markdown, logs; no weights). The run directories (weights, checkpoints) stay under RUNS (default
# runs/evidence-gpu): re-running the script resumes every piece. A smaller smoke run (e.g. on a CPU):
#   SEEDS=1 EVALS=20 RANK_N=3 RANK_ARGS="--recipe my_1_epoch.yaml" ATS_ARGS="--epochs 1" OUT=/tmp/ev bash ...
set -u
PY=${PY:-python}
OUT=${OUT:?set OUT to the folder for the results}
RUNS=${RUNS:-runs/evidence-gpu}
SEEDS=${SEEDS:-5}
EVALS=${EVALS:-1000}
RANK_N=${RANK_N:-12}
RANK_ARGS=${RANK_ARGS:-}
DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$RUNS"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TQDM_MININTERVAL=5
NAS="$PY -m nas.cli"
T0=$SECONDS

step() {  # step NAME CAP_SECONDS COMMAND...: run, log to $OUT/NAME.log, record the time and exit status
  local name=$1 cap=$2 t=$SECONDS rc
  shift 2
  timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc, $((SECONDS - t)) s (cap $cap s)" | tee -a "$OUT/timings.txt"
  return $rc
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "$(nproc) CPUs"
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  git log -1 --format='commit %H %s' 2>/dev/null
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
: > "$OUT/timings.txt"

step supernet 120 $NAS train-supernet spaces/psvit_tiny.yaml --out "$RUNS/supernet" || { echo "no supernet"; exit 1; }

step search_efficiency 300 $PY benchmarks/search_efficiency.py --supernet "$RUNS/supernet" --seeds "$SEEDS" \
    --max-evals "$EVALS" --device "$DEVICE" --workers $((3 * SEEDS)) --batch-size 2000 --out "$RUNS/search-efficiency" \
    --png "$OUT/search_efficiency.png" &
SE=$!

{
  step ats_trained 75 $PY benchmarks/ats_trained.py --out "$RUNS/ats-trained" ${ATS_ARGS:---epochs 30} &
  step ats_trained_p8 75 $PY benchmarks/ats_trained.py --patch 8 --out "$RUNS/ats-trained-p8" ${ATS_ARGS:-} &
  wait
  step rank_check 140 $NAS rank-check "$RUNS/supernet" -n "$RANK_N" --seeds 2 --workers 12 \
      --out "$RUNS/rank-check" $RANK_ARGS
  step rank_check_band 140 $NAS rank-check "$RUNS/supernet" -n "$RANK_N" --seeds 2 --workers 12 \
      --band 1.15G:1.3G --out "$RUNS/rank-check-band" $RANK_ARGS
} &
REST=$!
wait $SE $REST

# results (no weights) into $OUT
cp "$RUNS/search-efficiency/"{summary.json,curves.csv,search_efficiency.md} "$OUT/" 2>/dev/null
cp "$RUNS/ats-trained/"ats_trained.{md,json} "$OUT/" 2>/dev/null
cp "$RUNS/ats-trained-p8/ats_trained.md" "$OUT/ats_trained_p8.md" 2>/dev/null
cp "$RUNS/ats-trained-p8/ats_trained.json" "$OUT/ats_trained_p8.json" 2>/dev/null
for rc in rank-check rank-check-band; do
  for f in csv json png; do cp "$RUNS/$rc/rank_check.$f" "$OUT/${rc//-/_}.$f" 2>/dev/null; done
done
cp "$RUNS/supernet/train_log.csv" "$OUT/supernet_train_log.csv" 2>/dev/null

{
  echo "# Evidence on $(head -2 "$OUT/machine.txt" | tail -1 | cut -d, -f1)"
  echo; echo '```'; cat "$OUT/machine.txt"; cat "$OUT/timings.txt"; echo "total: $((SECONDS - T0)) s"; echo '```'
  echo; echo "## Search efficiency"; echo; cat "$OUT/search_efficiency.md" 2>/dev/null
  echo; echo "## ATS on a trained model"; echo; cat "$OUT/ats_trained.md" 2>/dev/null
  echo; cat "$OUT/ats_trained_p8.md" 2>/dev/null
  for rc in rank_check rank_check_band; do
    echo; echo "## $rc"; echo; echo '```'; tail -8 "$OUT/$rc.log" 2>/dev/null; echo '```'
  done
} > "$OUT/evidence.md"
cat "$OUT/evidence.md"
