#!/usr/bin/env bash
# fairl on one GPU, with no download, in under 8 minutes (issue 12):
#   1. builds the offline world and an encoder there (scripts/gpu_check.py encoder: the 88 MB
#      all-MiniLM-L6-v2 package is too large to carry, so a random-init BERT of its shape);
#   2. fairl run configs/toy.yaml --set run.device=cuda (every stage, on the GPU; one RL seed);
#   3. scripts/bench_irl.py --device cuda (the IRL bank on the GPU against the bank on the CPU);
#   4. make-pairs sampling throughput of a ~100M GPT-NeoX (scripts/gpu_check.py sampling).
# Prints completions/s, IRL pairs*epochs/s and GPU memory.
#
#   bash scripts/gpu_check.sh            # DEVICE=cpu bash scripts/gpu_check.sh: the same on a CPU
#
# On a lent GPU machine that has torch but not fairl's other packages, carry them as wheels in
# .whl/ (the device README): this script installs .whl/*.whl into /tmp/site when it finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORK=$(mktemp -d /tmp/fairl-gpu-check.XXXXXX)
export FAIRL_CACHE=$WORK/cache
fairl() { "$PY" -m cli.main "$@"; }
start=$SECONDS

echo "== environment"
fairl env
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

echo "== 1. the offline world and an encoder built here ($((SECONDS - start)) s)"
"$PY" scripts/gpu_check.py encoder "$WORK/encoder"

echo "== 2. fairl run configs/toy.yaml --set run.device=$DEVICE ($((SECONDS - start)) s)"
# one RL seed per reward in re-rlhf instead of three: the check must end within 8 minutes
fairl run configs/toy.yaml --set run.device="$DEVICE" --set run.root="$WORK/runs" \
  --set irl.embed.encoder="$WORK/encoder" --set "re_rlhf.seeds=[0]" 2>&1 | grep -v "^reward normalised" | tail -n 25
"$PY" - "$WORK/runs/toy" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for stage in ("train_expert", "make_pairs", "irl", "evaluate", "re_rlhf"):
    m = json.loads((run / stage / "manifest.json").read_text())
    print(f"{stage:13s} {m['wall_time_s']:7.1f} s  {m['timings_s']}")
EOF
echo "== 3. scripts/bench_irl.py --device $DEVICE ($((SECONDS - start)) s)"
if [ "$DEVICE" = cpu ]; then
  "$PY" scripts/bench_irl.py --quick
else
  "$PY" scripts/bench_irl.py --device "$DEVICE"
fi

echo "== 4. make-pairs sampling throughput ($((SECONDS - start)) s)"
"$PY" scripts/gpu_check.py sampling
echo "gpu_check done in $((SECONDS - start)) s"
