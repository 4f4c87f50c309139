#!/usr/bin/env bash
# What FER2013's duplicate images do to the confirmation's numbers, from nothing: for each seed
# and open class, the confirmation run (tools/confirm_ferplus.sh one SEED CLASS: the frozen
# `ferplus` preset, duplicates removed) and right after it its twin (tools/duplicates_effect.py:
# the same close-set model, stages 02-03 again with the duplicate rows kept). Pairs finish one by
# one, so a session that stops early leaves whole pairs, each twin's small record copied to
# docs/results beside the run's own as it finishes. At the end: the paired-difference table of
# every pair committed so far (tools/duplicates_effect.py --records), and this session's alone.
#
#   tools/duplicates_effect_ferplus.sh                 # seeds 12 13 14 (2 CPU cores: ~45 min a pair, 2 at a time)
#   SEEDS="12" tools/duplicates_effect_ferplus.sh      # one seed's seven pairs
#   DEVICE=cuda tools/duplicates_effect_ferplus.sh     # one GPU
#
# Resumable (finished stages and twins are skipped). A retrained run is checked against the run
# record committed by the confirmation (docs/results/ferplus_confirm_seeds12-14): the line
# "same metrics as the committed record" or "DIFFERS from the committed record" (the pairs are
# then still paired: the twin shares the retrained model).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
SEEDS="${SEEDS:-12 13 14}"
OUTPUTS="${OUTPUTS:-outputs/confirm_ferplus}"
TWINS="${TWINS:-outputs/confirm_ferplus_with_duplicates}"
TABLES="${TABLES:-outputs/tables_duplicates_effect}"
RECORDS="${RECORDS:-docs/results/ferplus_confirm_seeds12-14}"
TWIN_RECORDS="${TWIN_RECORDS:-docs/results/ferplus_confirm_seeds12-14_with_duplicates}"
PY="${PY:-.venv/bin/python}"
CLASSES=(surprise fear disgust happiness sadness anger neutral)
if [ "$DEVICE" = "cpu" ]; then JOBS="${JOBS:-$(nproc)}"; else JOBS="${JOBS:-1}"; fi
THREADS=$(($(nproc) / JOBS))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((THREADS > 0 ? THREADS : 1))}"
export DEVICE OUTPUTS PY

pair() {  # one SEED CLASS
    local name="ferplus_open-$2_seed$1" same=""
    local run="$OUTPUTS/$name"
    DEVICE="$DEVICE" JOBS=1 tools/confirm_ferplus.sh one "$1" "$2"
    if [ -f "$RECORDS/$name/metrics.csv" ]; then
        if cmp -s "$run/metrics.csv" "$RECORDS/$name/metrics.csv"; then
            echo "== $name: same metrics as the committed record"
            same=1
        else
            echo "== $name: DIFFERS from the committed record"
        fi
    fi
    "$PY" tools/duplicates_effect.py "$run" --out "$TWINS" --jobs 1 --no-tables
    # the twin's record pairs with the committed run record only when the model is the same one
    if [ -n "$same" ] && [ -f "$TWINS/$name/metrics.csv" ]; then
        mkdir -p "$TWIN_RECORDS/$name"
        cp "$TWINS/$name/metrics.csv" "$TWINS/$name/manifest.json" "$TWIN_RECORDS/$name/"
        echo "== $name: twin record in $TWIN_RECORDS"
    fi
}

if [ "${1:-}" = "pair" ]; then
    pair "$2" "$3"
    exit 0
fi

PAIRS=()
for s in $SEEDS; do for c in "${CLASSES[@]}"; do PAIRS+=("$s" "$c"); done; done
printf '%s %s\n' "${PAIRS[@]}" | xargs -P "$JOBS" -L 1 "$0" pair
globs=()
for s in $SEEDS; do globs+=("$OUTPUTS/ferplus_open-*_seed$s"); done
"$PY" tools/duplicates_effect.py "${globs[@]}" --out "$TWINS" --tables "$TABLES/this_session"
# every pair committed so far, this session's and earlier ones' (the runs' records are the confirmation's)
"$PY" tools/duplicates_effect.py --records "$RECORDS" "$TWIN_RECORDS" --tables "$TABLES"
echo "== the difference: $TABLES/difference.md (this session's pairs: $TABLES/this_session); twin records: $TWIN_RECORDS"
