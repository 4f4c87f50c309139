#!/usr/bin/env bash
# The frozen `ferplus` detector preset, confirmed once on fresh seeds (12, 13, 14) with FERPlus's
# duplicate evaluation rows removed (the default for open-set FERPlus runs). Declared in
# docs/RESULTS.md ("Confirmation on fresh seeds, declared before the runs") before any of its runs
# existed: whatever this prints is the headline, beside the earlier seeds' table. Nothing in it
# chooses anything; it runs the seven open classes x three seeds end to end and writes the tables.
#
#   tools/confirm_ferplus.sh                      # 2 CPU cores: about 24 min per run, two at a time (~4.5 h)
#   DEVICE=cuda tools/confirm_ferplus.sh          # one GPU: every run in turn, a few minutes each
#   DRY_RUN=1 tools/confirm_ferplus.sh            # print the commands only
#
# A finished run is skipped and a killed one resumes (stages are keyed, stage 01 checkpoints every
# epoch), so the script can be re-run in each session until the tables appear.
# Settings (environment variables): DEVICE (cpu), DATA_ROOT (../shared/data/ferplus),
# OUTPUTS (outputs/confirm_ferplus), TABLES (outputs/tables_confirm_ferplus), JOBS (runs at a time),
# RECORDS (docs/results/ferplus_confirm_seeds12-14: each run's metrics.csv and manifest.json).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
DATA_ROOT="${DATA_ROOT:-../shared/data/ferplus}"
OUTPUTS="${OUTPUTS:-outputs/confirm_ferplus}"
TABLES="${TABLES:-outputs/tables_confirm_ferplus}"
RECORDS="${RECORDS:-docs/results/ferplus_confirm_seeds12-14}"
PY="${PY:-.venv/bin/python}"
CLASSES=(surprise fear disgust happiness sadness anger neutral)
SEEDS=(12 13 14)
if [ "$DEVICE" = "cpu" ]; then JOBS="${JOBS:-$(nproc)}"; else JOBS="${JOBS:-1}"; fi
THREADS=$(($(nproc) / JOBS))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((THREADS > 0 ? THREADS : 1))}"

# the earlier seeds' settings (docs/journal/openset_ferplus_rules.md, "the third declared rule's result"), nothing new
DETECTORS="['msp','max_logit','energy','entropy','mahalanobis','knn','tknn','vim','react','ash','scale','gen','fdbd','nnguide','rmd','openmax','pood_knn','sal_filter','sal','pseudo_oe']"
MAIN=(--stages 01 02 03 -p arch=smallface -p recipe=fast -p epochs=6 -p input_size=32
    -p detector_preset=ferplus -p "detectors=$DETECTORS")

one() {  # one SEED CLASS
    local cmd=("$PY" -m ferlib.run sweep --dataset ferplus --data-root "$DATA_ROOT" --executor python
        --outputs "$OUTPUTS" --open "$2" --seeds "$1" --device "$DEVICE" "${MAIN[@]}")
    if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${cmd[@]}"; echo; return 0; fi
    echo "== $(date -u +%H:%M:%S) seed $1, $2 open"
    "${cmd[@]}"
}

if [ "${1:-}" = "one" ]; then
    one "$2" "$3"
    exit 0
fi

PAIRS=()
for s in "${SEEDS[@]}"; do for c in "${CLASSES[@]}"; do PAIRS+=("$s" "$c"); done; done
printf '%s %s\n' "${PAIRS[@]}" | xargs -P "$JOBS" -L 1 "$0" one
[ -n "${DRY_RUN:-}" ] && exit 0
# a finished run: its manifest says stage 03 finished (a killed stage 03 may leave a partial metrics.csv)
n=$("$PY" -c 'import glob, json, sys
print(sum(json.load(open(m)).get("stages", {}).get("03_detect_open_set", {}).get("status") == "finished"
          for m in glob.glob(sys.argv[1] + "/*/manifest.json")))' "$OUTPUTS")
if [ "$n" -lt $((${#CLASSES[@]} * ${#SEEDS[@]})) ]; then
    echo "== $n of $((${#CLASSES[@]} * ${#SEEDS[@]})) runs finished: run again to finish the rest" >&2
    exit 1
fi
"$PY" -m ferlib.run tables "$OUTPUTS/ferplus_open-*" --out "$TABLES"
# the small records that re-report the tables without the runs (docs/results/README.md)
for run in "$OUTPUTS"/ferplus_open-*; do
    mkdir -p "$RECORDS/$(basename "$run")"
    cp "$run/metrics.csv" "$run/manifest.json" "$RECORDS/$(basename "$run")/"
done
echo "== the headline: $TABLES/ferplus_overview.md (pseudo_oe's row: honest AUROC and FPR@95); records: $RECORDS"
