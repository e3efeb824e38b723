#!/usr/bin/env bash
# The GPU figures still missing, in one device call of at most 10 minutes, most wanted first:
#   1. the throughput table of issue 8 (benchmarks/throughput.py, batch 256, compiled codecs included);
#   2. the accuracy table of issue 5 (benchmarks/accuracy.py), seed by seed, for what is left of BUDGET seconds;
#      --resume keeps earlier calls' runs, so repeated calls complete the table.
# On the lent machine, from the repository root, with carry [".whl", ".data", "runs/accuracy"] (see docs/results.md;
# carry no more of runs/: the carry limit is 64 MiB and the wheels and data take 42 MB of it):
#   bash scripts/gpu_session.sh
# then copy the returned accuracy/ folder back to runs/accuracy here before the next call.
# Settings (environment): BUDGET (seconds for the whole script, default 540), ARMS, SEEDS, EPOCHS (default:
# accuracy.py's, 40), SKIP_THROUGHPUT=1,
# ACC_DIR (the accuracy folder resumed, default runs/accuracy), SMOKE=1 (tiny CPU run of the same steps, used by
# the tests). Results go to $OUT (default runs/gpu-session): throughput/, rewritten after every row (the compiled
# rows come last, so if compiling runs past its share of the budget the table of the other rows is complete), and
# accuracy/, which starts as a copy of ACC_DIR when $OUT has none and is written run by run, so a call killed at its
# time limit keeps every finished run.
set -euo pipefail
start=$SECONDS
BUDGET=${BUDGET:-540}
OUT=${OUT:-runs/gpu-session}
ACC_DIR=${ACC_DIR:-runs/accuracy}
ARMS=${ARMS:-baseline latent-adversarial randaugment isda varmixup latent-noise mixup randaugment+latent-adversarial isda+latent-noise}
SEEDS=${SEEDS:-0 1 2}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's latent_transforms, installed or not
export PYTHONUNBUFFERED=1  # output up to a kill comes back
if compgen -G ".whl/*.whl" > /dev/null; then  # the GPU image lacks kornia and normflows
    SITE="${HOME:-/tmp}/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if [ "${SMOKE:-0}" = 1 ]; then  # random images
    TP_ARGS="--smoke --device cpu"; ACC_ARGS="--smoke --device cpu"
else
    DATA=.data/cifar10; [ -f $DATA/train-5k.npz ] || DATA=../shared/data/cifar10  # carried, else beside the checkout
    TP_ARGS="--batch-size 256"; ACC_ARGS="--train npz:$DATA/train-5k.npz --test npz:$DATA/test.npz ${EPOCHS:+--epochs $EPOCHS}"
    "$PY" -c "import torch; print(torch.cuda.get_device_name(), 'torch', torch.__version__)"
fi

if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then  # on CUDA, --compile (the default there) adds the compiled-codec rows
    # shellcheck disable=SC2086
    timeout $((BUDGET / 2)) "$PY" benchmarks/throughput.py $TP_ARGS --out "$OUT/throughput" \
        || echo "throughput.py exit $?: throughput/ holds every row finished (marked partial)"
fi

ACC_OUT="$OUT/accuracy"
if [ ! -f "$ACC_OUT/results.json" ] && [ -d "$ACC_DIR" ]; then mkdir -p "$ACC_OUT" && cp -r "$ACC_DIR"/. "$ACC_OUT/"; fi
left=$((BUDGET - (SECONDS - start)))
if [ "$left" -ge 45 ]; then  # accuracy.py starts no run it expects to end after its budget (15 s kept for its start-up);
    # timeout is the backstop, 30 s later, still inside the device's 600 s
    # shellcheck disable=SC2086
    timeout $((left + 30)) "$PY" benchmarks/accuracy.py $ACC_ARGS --arms $ARMS --seeds $SEEDS --resume \
        --no-progress --time-budget "$((left - 15))" --out "$ACC_OUT" || echo "accuracy.py exit $?"
fi
echo "gpu_session.sh: $((SECONDS - start)) s; results in $OUT"
