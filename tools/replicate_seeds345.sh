#!/usr/bin/env bash
# Issue 12's declared replication, end to end: docs/RESULTS.md, section "Declared before seeds
# 3-5 exist". The rule was fixed (commit ec10b1a) before any output of these runs existed; this
# script only runs it, step by step, so that one command reproduces every number it reports.
#
#   1. seeds 3, 4, 5 x the 7 open classes: stages 01-03, the CPU sweep's settings (smallface,
#      `fast`, 32 px, 6 epochs, 20 detectors, pseudo_oe with its FERPlus settings);
#   2. stage 03 on the tuning rows (FERPlus's validation close + open rows, never reported);
#   3. choice 1: pseudo_oe's share_multiplier, 0.0 (incumbent) or 1.0, on the mean honest tuning
#      AUROC of the 21 runs, the incumbent kept unless beaten by more than .01;
#   4. choice 2: features, 'penultimate' (incumbent) or 'pyramid', with choice 1's value;
#   5. if a choice moved: stage 03 again on the reported sets with the chosen settings (all 20
#      detectors: stage 03 rewrites its metrics rows as a whole);
#   6. the tables of the 21 runs (mean and std over the three seeds, both protocols, FPR@95).
#
# Every step is keyed or skipped when done, so a killed run of this script resumes where it
# stopped (a finished choice is read back from $OUTPUTS/choices: delete that folder to choose
# again). Settings (environment variables):
#   DEVICE      cpu (default) or cuda. On cuda the 21 runs share the one GPU (--jobs-per-gpu 21).
#   JOBS        cpu: runs at a time, one thread each (default: the number of cores); also the
#               child processes of the two choices.
#   DATA_ROOT   FERPlus (default ../shared/data/ferplus)
#   OUTPUTS     run folders (default outputs/sweep_fast32); choices in $OUTPUTS/choices
#   TABLES      where the tables go (default outputs/tables_fast32_seeds345)
#   PY          the kit's python (default .venv/bin/python)
#   SMOKE_CLASSES, SMOKE_SEEDS, SMOKE_EPOCHS: a smaller run to check the script itself (its
#               output is no result of the rule); unset, the rule's 7 classes, seeds 3 4 5, 6 epochs.
# Cost: on 2 CPU cores about 7.5 hours for steps 1-2 (21 runs of ~21 minutes, two at a time)
# and under an hour for 3-6; on one H200 a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
JOBS="${JOBS:-$(nproc)}"
DATA_ROOT="${DATA_ROOT:-../shared/data/ferplus}"
OUTPUTS="${OUTPUTS:-outputs/sweep_fast32}"
TABLES="${TABLES:-outputs/tables_fast32_seeds345}"
PY="${PY:-.venv/bin/python}"
CHOICES="$OUTPUTS/choices"

PO="{'top_fraction': 0.2, 'rounds': 3, 'first_params': {'k': 200}, 'head': 'mlp'}"
DETECTORS="['msp','max_logit','energy','entropy','mahalanobis','knn','tknn','vim','react','ash','scale','gen','fdbd','nnguide','rmd','openmax','pood_knn','sal_filter','sal','pseudo_oe']"
if [ -n "${SMOKE_CLASSES:-}${SMOKE_SEEDS:-}${SMOKE_EPOCHS:-}" ] && [ "$OUTPUTS" = "outputs/sweep_fast32" ]; then
    echo "error: a smoke run (SMOKE_*) must write elsewhere than the rule's outputs: set OUTPUTS and TABLES" >&2
    exit 2
fi
read -r -a CLASSES <<< "${SMOKE_CLASSES:-surprise fear disgust happiness sadness anger neutral}"
read -r -a SEEDS <<< "${SMOKE_SEEDS:-3 4 5}"
EPOCHS="${SMOKE_EPOCHS:-6}"

if [ "$DEVICE" = "cpu" ]; then
    LAUNCH=(--device cpu --launcher submitit --cluster local --array-parallelism "$JOBS" --cpus-per-job 1)
    export OMP_NUM_THREADS=1  # the choices' child processes: one core each
else
    LAUNCH=(--device "$DEVICE" --launcher submitit --cluster local --jobs-per-gpu $((${#CLASSES[@]} * ${#SEEDS[@]})))
fi
SWEEP=("$PY" -m ferlib.run sweep --dataset ferplus --data-root "$DATA_ROOT" --open "${CLASSES[@]}"
    --seeds "${SEEDS[@]}" --executor python --outputs "$OUTPUTS" "${LAUNCH[@]}")

say() { echo "== $(date -u +%H:%M:%S) $*"; }

say "1/6 runs: stages 01-03 of ${#CLASSES[@]} classes x ${#SEEDS[@]} seeds on $DEVICE"
"${SWEEP[@]}" --stages 01 02 03 -p arch=smallface -p recipe=fast -p epochs="$EPOCHS" -p input_size=32 \
    -p "detector_params={'pseudo_oe': $PO}" -p "detectors=$DETECTORS"

RUNS=()
for s in "${SEEDS[@]}"; do for c in "${CLASSES[@]}"; do
    RUNS+=("$OUTPUTS/ferplus_open-${c}_seed${s}")
done; done

say "2/6 stage 03 on the tuning rows"
missing=0
for r in "${RUNS[@]}"; do [ -f "$r/03_detect/scores_honest_tuning.csv" ] || missing=1; done
if [ "$missing" = 1 ]; then
    "${SWEEP[@]}" --stages 03 -p input_size=32 -p "detectors=['msp']" -p "protocols=['honest']" \
        -p eval_subset=tuning --force
fi

mkdir -p "$CHOICES"
choose() {  # choose NAME PARAM PARAMS VALUES...: the declared rule, one step
    local name="$1" param="$2" params="$3"
    shift 3
    if [ ! -f "$CHOICES/seeds345_$name.txt" ]; then
        "$PY" tools/sensitivity.py --run-dir "${RUNS[@]}" --detector pseudo_oe --param "$param" --values "$@" \
            --params "$params" --choose-on tuning --min-gain 0.01 --jobs "$JOBS" \
            --out "$CHOICES/seeds345_$name.csv" --choice-out "$CHOICES/seeds345_$name.txt" \
            | tee "$CHOICES/seeds345_$name.log" >&2  # the log to stderr: stdout carries the value
    fi
    cat "$CHOICES/seeds345_$name.txt"
}
say "3/6 choice 1: share_multiplier"
SHARE="$(choose share_multiplier share_multiplier "$PO" 0.0 1.0)"
PO1="$("$PY" -c "import sys; d = eval(sys.argv[1]); d['share_multiplier'] = eval(sys.argv[2]); print(d)" "$PO" "$SHARE")"
say "4/6 choice 2: features, with share_multiplier = $SHARE"
FEATURES="$(choose features features "$PO1" "'penultimate'" "'pyramid'")"
PO2="$("$PY" -c "import sys; d = eval(sys.argv[1]); d['features'] = eval(sys.argv[2]); print(d)" "$PO1" "$FEATURES")"
echo "$PO2" > "$CHOICES/seeds345_chosen.txt"
say "chosen: $PO2"

if [ "$SHARE" = "0.0" ] && [ "$FEATURES" = "'penultimate'" ]; then
    say "5/6 both incumbents kept: the reported scores of step 1 stand"
else
    say "5/6 stage 03 on the reported sets with the chosen settings"
    "${SWEEP[@]}" --stages 03 -p input_size=32 -p "detector_params={'pseudo_oe': $PO2}" \
        -p "detectors=$DETECTORS" --force
fi

say "6/6 tables"
"$PY" -m ferlib.run tables "${RUNS[@]}" --out "$TABLES"
say "done: $TABLES, $CHOICES"
