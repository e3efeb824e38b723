#!/usr/bin/env bash
# The GPU figures still missing, in one device call of at most 10 minutes, most wanted first:
#   0. tests/test_device.py and tests/test_host_syncs.py on the GPU (pytest --device cuda, at most
#      DEVICE_TESTS_BUDGET s, default 120): every method's contract there, nothing copied between devices, exact codec
#      math under TF32 and autocast, CUDA's own count of host syncs within the pinned numbers (needs
#      pytest: its wheels in .whl/, see docs/results.md; without it the step says so and is skipped);
#   1. the throughput table of issue 8 (benchmarks/throughput.py, batch 256, compiled codecs included), for at most
#      TP_BUDGET seconds (the eager rows take seconds; the compiled rows come last and are what a cap cuts);
#   2. the accuracy table of issue 5 (benchmarks/accuracy.py) for the rest of BUDGET: JOBS processes at once on the
#      one GPU (a ResNet-18 at batch 128 leaves most of it idle), each the shard of the runs still to do that
#      accuracy.py --shard gives it (balanced by its per-arm costs), each in its own folder with its own
#      --time-budget; then one report of every shard (--merge).
# On the lent machine, from the repository root, with carry [".whl", ".data", "runs/accuracy"] (see docs/results.md;
# carry no more of runs/: the carry limit is 64 MiB and the wheels and data take 42 MB of it):
#   GIT_COMMIT=<this checkout's commit> bash scripts/gpu_session.sh
# (where the device's copy of the tree has no .git, the results record the commit GIT_COMMIT gives).
# What comes back (7 files, within the device's 8): device-tests.txt; throughput/throughput.{json,md};
# accuracy/results.{json,md} and accuracy/reliability.png (the report of all shards, this call's and earlier
# calls'); accuracy/shards.tar (every shard's folder, those carried in included: results.json and log.txt). Before
# the next call, unpack them here (FILES: the call's files_at):
#   mkdir -p runs/accuracy && tar -xf FILES/accuracy/shards.tar -C runs/accuracy \
#       && cp FILES/accuracy/results.* FILES/accuracy/reliability.png runs/accuracy/
# A next call resumes every shard-*/ folder there: no finished run is run again, whatever JOBS, ARMS or SEEDS it has.
# (Only shard-*/ folders are resumed: a results.json directly in runs/accuracy is the last merged report.)
# Settings (environment): BUDGET (seconds for the whole script, default 540: the merge after the shards' backstop
# still ends inside the device's 600 s; keep it at most the call's limit_s minus 60, as a call given less device
# time than asked ends sooner: shards.tar is rewritten every PACK_EVERY s, so such a call still returns what was done
# by then, even killed outright: no EXIT trap then), PACK_EVERY (seconds between those rewrites, default 30; the tests
# use 1), TP_BUDGET (default BUDGET/3), JOBS (accuracy processes at once, default 6; SMOKE: 1), ARMS, SEEDS,
# EPOCHS (default: accuracy.py's, 40), SKIP_THROUGHPUT=1 (all of BUDGET for accuracy), SKIP_DEVICE_TESTS=1,
# ACC_DIR (the unpacked folder resumed, default runs/accuracy), SMOKE=1 (tiny CPU run of the same steps, used by the
# tests). Results go to $OUT (default runs/gpu-session); throughput/ is rewritten after every row, so a call cut
# short keeps every finished row.
set -euo pipefail
shopt -s nullglob
start=$SECONDS
BUDGET=${BUDGET:-540}
PACK_EVERY=${PACK_EVERY:-30}
case $PACK_EVERY in ''|*[!0-9]*|0) echo "PACK_EVERY must be a whole number of seconds >= 1, got '$PACK_EVERY'" >&2; exit 2;; esac
case $BUDGET in ''|*[!0-9]*|0) echo "BUDGET must be a whole number of seconds >= 1, got '$BUDGET'" >&2; exit 2;; esac
case ${JOBS:-1} in ''|*[!0-9]*|0) echo "JOBS must be a whole number >= 1, got '${JOBS:-}'" >&2; exit 2;; esac
case ${DEVICE_TESTS_BUDGET:-1} in ''|*[!0-9]*|0) echo "DEVICE_TESTS_BUDGET must be a whole number of seconds >= 1, got '${DEVICE_TESTS_BUDGET:-}'" >&2; exit 2;; esac
failed=0  # a step that failed makes the exit status 1, after everything that could be kept was packed
TP_BUDGET=${TP_BUDGET:-$((BUDGET >= 3 ? BUDGET / 3 : 1))}  # never 0: `timeout 0` is no limit at all
case $TP_BUDGET in ''|*[!0-9]*|0) echo "TP_BUDGET must be a whole number of seconds >= 1, got '$TP_BUDGET'" >&2; exit 2;; esac
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
    "$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PYTHONPATH"
fi
if [ "${SMOKE:-0}" = 1 ]; then  # random images; of the device tests, the one of the recorder
    TP_ARGS="--smoke --device cpu"; ACC_ARGS="--smoke --device cpu"; JOBS=${JOBS:-1}
    DEVICE_ARGS="--device cpu tests/test_device.py -k recorder"
else
    DEVICE_ARGS="--device cuda tests/test_device.py tests/test_host_syncs.py"
    DATA=.data/cifar10; [ -f $DATA/train-5k.npz ] || DATA=../shared/data/cifar10  # carried, else beside the checkout
    TP_ARGS="--batch-size 256"; ACC_ARGS="--train npz:$DATA/train-5k.npz --test npz:$DATA/test.npz ${EPOCHS:+--epochs $EPOCHS}"
    JOBS=${JOBS:-6}
    "$PY" -c "import torch; print(torch.cuda.get_device_name(), 'torch', torch.__version__)"
    mode=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -n 1 || true)
    if [ "$JOBS" -gt 1 ] && [ -n "$mode" ] && [ "$mode" != "Default" ]; then  # one process per GPU there
        echo "GPU compute mode $mode: one accuracy process, not $JOBS"; JOBS=1
    fi
fi

if [ "${SKIP_DEVICE_TESTS:-0}" != 1 ]; then
    if "$PY" -c "import pytest" 2> /dev/null; then
        # shellcheck disable=SC2086
        timeout "${DEVICE_TESTS_BUDGET:-120}" "$PY" -m pytest -q -p no:cacheprovider $DEVICE_ARGS \
            > "$OUT/device-tests.txt" 2>&1 || { echo "device tests exit $?; the end of $OUT/device-tests.txt:"
                                                tail -n 15 "$OUT/device-tests.txt"; failed=1; }
        tail -n 1 "$OUT/device-tests.txt"
    else
        echo "no pytest here: the device tests not run (carry its wheels in .whl/: see docs/results.md)"
    fi
fi

if [ "${SKIP_THROUGHPUT:-0}" != 1 ]; then  # on CUDA, --compile (the default there) adds the compiled-codec rows
    # shellcheck disable=SC2086
    timeout "$TP_BUDGET" "$PY" benchmarks/throughput.py $TP_ARGS --out "$OUT/throughput" \
        || echo "throughput.py exit $?: throughput/ holds every row finished (marked partial)"
fi

ACC_OUT="$OUT/accuracy"
mkdir -p "$ACC_OUT"
ACC_OUT=$(cd "$ACC_OUT" && pwd)
shards=$(mktemp -d)  # outside $OUT: at most 8 files come back, so the shards travel as one tar
chmod "$(umask -S)" "$shards"  # mktemp's 0700 travels as the tar's "./": unpacking made runs/accuracy private
pack() {  # every shard's folder into $ACC_OUT/shards.tar, replaced whole: a call cut short returns the last one
    local rc=0  # GNU tar exits 1 when a file (a growing log) changed while read: the archive is still whole
    tar -C "$shards" -cf "$ACC_OUT/shards.tar.part" . 2> /dev/null || rc=$?
    if [ "$rc" -le 1 ]; then mv "$ACC_OUT/shards.tar.part" "$ACC_OUT/shards.tar"; fi
}
trap 'pack; rm -rf "$shards"' EXIT
earlier=("$ACC_DIR"/shard-*/results.json)  # read by every shard before its first run; nothing writes them now
for dir in "$ACC_DIR"/shard-*/; do cp -r "$dir" "$shards/"; done
threads=$(( $(nproc) / JOBS )); [ "$threads" -ge 1 ] || threads=1
left=$((BUDGET - (SECONDS - start)))
if [ "$left" -ge 45 ]; then  # accuracy.py starts no run it expects to end after its budget (15 s kept for its start-up);
    # timeout is the backstop, 30 s later, still inside the device's 600 s
    (  # also every PACK_EVERY s while the shards run (a kill skips the EXIT trap). A TERM (below, once the shards
        # are done) lets a pack under way finish, tar and mv (never two packs writing shards.tar.part at once), and
        # cuts the sleep short; the sleep's output goes nowhere, so it never holds the caller's stdout open
        stop=0
        nap=""
        trap 'stop=1; [ -z "$nap" ] || kill "$nap" 2> /dev/null || true' TERM
        while [ "$stop" = 0 ]; do
            sleep "$PACK_EVERY" > /dev/null 2>&1 & nap=$!
            [ "$stop" = 0 ] || kill "$nap" 2> /dev/null || true  # a TERM between the two lines above
            wait "$nap" || true
            [ "$stop" = 1 ] || pack
        done
    ) &
    packer=$!
    pids=()
    for ((i = 0; i < JOBS; i++)); do
        mkdir -p "$shards/shard-$i"
        echo "--- gpu_session.sh call at $(date -u +%FT%TZ) ---" >> "$shards/shard-$i/log.txt"  # it grows across calls
        # shellcheck disable=SC2086
        timeout $((left + 30)) "$PY" benchmarks/accuracy.py $ACC_ARGS --arms $ARMS --seeds $SEEDS --resume \
            --no-progress --shard "$i/$JOBS" --done "${earlier[@]}" --threads "$threads" \
            --time-budget "$((left - 15))" --out "$shards/shard-$i" >> "$shards/shard-$i/log.txt" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" \
            || { echo "accuracy.py shard $i/$JOBS exit $?; the end of its log:"; tail -n 15 "$shards/shard-$i/log.txt"
                 failed=1; }
    done
    kill "$packer" 2>/dev/null || true
    wait "$packer" 2>/dev/null || true
fi
pack
cd "$shards"  # the report names the shards' folders as they are unpacked here, shard-*/
results=(shard-*/results.json)
if [ ${#results[@]} -gt 0 ]; then
    "$PY" "$OLDPWD/benchmarks/accuracy.py" --merge "${results[@]}" --out "$ACC_OUT" \
        || { echo "accuracy.py --merge exit $?"; failed=1; }
else
    echo "no accuracy run has finished: no report (accuracy/ holds only shards.tar)"
fi
cd "$OLDPWD"
echo "gpu_session.sh: $((SECONDS - start)) s; results in $OUT$([ "$failed" = 0 ] || echo "; a step failed (above)")"
exit "$failed"
