#!/usr/bin/env bash
# The declared replications of open-set FERPlus (7 open classes x 3 seeds), end to end: the first
# declared rule (seeds 3-5; docs/journal/openset_ferplus_rules.md, "Declared before seeds 3-5
# exist"), and with SEEDS etc. set, the second (6-8) and third (9-11). The rule was fixed (commit
# ec10b1a) before any output of these runs existed; this script only runs it, so that one command
# reproduces every number it reports. Results: docs/RESULTS.md, "Open-set detection on FERPlus".
#
#   1. each of seeds 3, 4, 5 x the 7 open classes: stages 01-03 with the CPU sweep's settings
#      (smallface, `fast`, 32 px, 6 epochs, 20 detectors, pseudo_oe with its FERPlus settings),
#      then stage 03 on the tuning rows (FERPlus's validation close + open rows, never reported),
#      then the run's *record* (tools/replication_records.py record): pseudo_oe under the four
#      combinations of the two candidates, on the tuning and the reported rows, beside copies of
#      the run's metrics.csv and manifest.json, a few kilobytes in $RECORDS (committed: a
#      session's machine keeps nothing of outputs/, so the records are what carries the runs
#      from one session to the next);
#   2. once all 21 records exist (tools/replication_records.py report): choice 1, share_multiplier
#      0.0 (incumbent) or 1.0, and choice 2, features 'penultimate' (incumbent) or 'pyramid' with
#      choice 1's value, each on the mean honest tuning AUROC over the 21 runs, the incumbent kept
#      unless beaten by more than .01; then the tables with pseudo_oe's chosen combination beside
#      the other 19 detectors (mean and std over the seeds, both protocols, FPR@95).
#
# The recorded runs used FERPlus's whole splits; open-set FERPlus runs now drop duplicate evaluation
# rows by default (docs/RESULTS.md, "Duplicate images in FERPlus"), so a run started today
# evaluates fewer rows than the committed records.
# A finished run (its record exists) is skipped, a started one resumes (stage 01 is keyed and
# checkpointed per epoch), so the script can be run again in each session until step 2 runs.
# Settings (environment variables):
#   DEVICE      cpu (default) or cuda (every run a process of its own on the one GPU).
#   JOBS        runs and their records at a time (default: cpu, the cores, one thread each; cuda,
#               all of them)
#   DATA_ROOT   FERPlus (default ../shared/data/ferplus)
#   OUTPUTS     run folders (default outputs/sweep_fast32)
#   RECORDS     the runs' records (default docs/results/ferplus_openset_seeds3-5)
#   TABLES      where the tables go (default outputs/tables_fast32_seeds345)
#   PY          the kit's python (default .venv/bin/python)
#   SEEDS       the seeds (default "3 4 5"; "6 7 8" for the second declared rule, with the next two)
#   MATCHED_DRAWS  records also hold the tuning rows at the reported open share, N draws (default 0)
#   CHOOSE_ON   the rows the report's rule reads: tuning (default) or tuning_matched
#   FEATURES_INCUMBENT  the features the rule keeps within its margin: penultimate (default) or pyramid
#   PRESET      stage 03 runs pseudo_oe with this detector preset (ferlib/openset/presets.py)
#               instead of the settings written below (PO); the third declared rule uses 'ferplus'
#   VARIANTS    a rule that chooses nothing on its runs: records hold pseudo_oe under each named
#               variant ("{'name': settings or preset name, ...}"), and the report takes DECLARED's
#               rows for the tables (tools/replication_records.py record --variants, report --declared)
#   DECLARED    the variant the report takes (needs VARIANTS), or
#   INCUMBENT   the variant stage 03 runs, kept unless another beats it on CHOOSE_ON's rows by
#               more than MIN_GAIN (default .01)
#   SMOKE_CLASSES, SMOKE_SEEDS, SMOKE_EPOCHS: a smaller run to check the script itself (its
#               output is no result of the rule; set OUTPUTS, RECORDS and TABLES elsewhere).
# Cost: on 2 CPU cores about 24 minutes per run and record, two at a time (about 4.5 hours for
# the 21); on one H200 a few minutes for the runs, and about 3 CPU-minutes per record.
#
#   tools/replicate_ferplus_openset.sh                 # all: runs not yet recorded, then the report
#   tools/replicate_ferplus_openset.sh one 3 surprise  # one run and its record
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
DATA_ROOT="${DATA_ROOT:-../shared/data/ferplus}"
OUTPUTS="${OUTPUTS:-outputs/sweep_fast32}"
RECORDS="${RECORDS:-docs/results/ferplus_openset_seeds3-5}"
TABLES="${TABLES:-outputs/tables_fast32_seeds345}"
PY="${PY:-.venv/bin/python}"
if [ -n "${SMOKE_CLASSES:-}${SMOKE_SEEDS:-}${SMOKE_EPOCHS:-}" ] && { [ "$OUTPUTS" = "outputs/sweep_fast32" ] ||
    [ "$RECORDS" = "docs/results/ferplus_openset_seeds3-5" ]; }; then
    echo "error: a smoke run (SMOKE_*) must write elsewhere than the rule's outputs: set OUTPUTS, RECORDS and TABLES" >&2
    exit 2
fi
read -r -a CLASSES <<< "${SMOKE_CLASSES:-surprise fear disgust happiness sadness anger neutral}"
read -r -a SEEDS <<< "${SMOKE_SEEDS:-${SEEDS:-3 4 5}}"
MATCHED_DRAWS="${MATCHED_DRAWS:-0}"
CHOOSE_ON="${CHOOSE_ON:-tuning}"
FEATURES_INCUMBENT="${FEATURES_INCUMBENT:-penultimate}"
EPOCHS="${SMOKE_EPOCHS:-6}"
EXPECT=$((${#CLASSES[@]} * ${#SEEDS[@]}))
# cpu: one run per core; a GPU: every run at once (small models leave most of a large GPU idle)
if [ "$DEVICE" = "cpu" ]; then JOBS="${JOBS:-$(nproc)}"; else JOBS="${JOBS:-$EXPECT}"; fi
THREADS=$(($(nproc) / JOBS))
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((THREADS > 0 ? THREADS : 1))}"  # the cores shared out

PO="{'top_fraction': 0.2, 'rounds': 3, 'first_params': {'k': 200}, 'head': 'mlp'}"
DETECTORS="['msp','max_logit','energy','entropy','mahalanobis','knn','tknn','vim','react','ash','scale','gen','fdbd','nnguide','rmd','openmax','pood_knn','sal_filter','sal','pseudo_oe']"
if [ -n "${PRESET:-}" ]; then DETECTOR_SETTINGS=(-p "detector_preset=$PRESET")
else DETECTOR_SETTINGS=(-p "detector_params={'pseudo_oe': $PO}"); fi
if [ -n "${VARIANTS:-}" ] && [ -z "${DECLARED:-}${INCUMBENT:-}" ]; then
    echo "error: VARIANTS needs DECLARED or INCUMBENT" >&2; exit 2
fi
if [ -n "${VARIANTS:-}" ] && [ -n "${DECLARED:-}" ]; then RECORD_HOW=(--variants "$VARIANTS"); REPORT_HOW=(--declared "$DECLARED")
elif [ -n "${VARIANTS:-}" ]; then RECORD_HOW=(--variants "$VARIANTS")
    REPORT_HOW=(--incumbent "$INCUMBENT" --choose-on "$CHOOSE_ON" --min-gain "${MIN_GAIN:-0.01}")
else RECORD_HOW=(--params "$PO"); REPORT_HOW=(--choose-on "$CHOOSE_ON" --features-incumbent "$FEATURES_INCUMBENT"); fi
MAIN=(--stages 01 02 03 -p arch=smallface -p recipe=fast -p epochs="$EPOCHS" -p input_size=32
    "${DETECTOR_SETTINGS[@]}" -p "detectors=$DETECTORS")
TUNING=(--stages 03 -p input_size=32 -p "detectors=['msp']" -p "protocols=['honest']" -p eval_subset=tuning --force)
sweep() { "$PY" -m ferlib.run sweep --dataset ferplus --data-root "$DATA_ROOT" --executor python --outputs "$OUTPUTS" "$@"; }
say() { echo "== $(date -u +%H:%M:%S) $*"; }

one() {  # one SEED CLASS: the run, its tuning rows, its record (each skipped when done)
    local seed="$1" open="$2" run="$OUTPUTS/ferplus_open-$2_seed$1"
    if [ -f "$RECORDS/ferplus_open-${open}_seed${seed}/pseudo_oe_settings.csv" ]; then
        say "$seed:$open recorded"
        return 0
    fi
    local device=(--device "$DEVICE")
    if [ ! -f "$run/03_detect/scores_honest_tuning.csv" ]; then  # the tuning rows come after the main stages
        say "$seed:$open stages 01-03"
        sweep --open "$open" --seeds "$seed" "${device[@]}" "${MAIN[@]}"
        say "$seed:$open stage 03 on the tuning rows"
        sweep --open "$open" --seeds "$seed" "${device[@]}" "${TUNING[@]}"
    fi
    say "$seed:$open record"
    "$PY" tools/replication_records.py record "$run" --out "$RECORDS" "${RECORD_HOW[@]}" --matched-draws "$MATCHED_DRAWS"
    say "$seed:$open done"
}

if [ "${1:-}" = "one" ]; then
    one "$2" "$3"
    exit 0
fi

PAIRS=()
for s in "${SEEDS[@]}"; do for c in "${CLASSES[@]}"; do PAIRS+=("$s" "$c"); done; done
say "runs not yet recorded, and their records: $JOBS at a time on $DEVICE"
printf '%s %s\n' "${PAIRS[@]}" | xargs -P "$JOBS" -L 1 "$0" one || say "some runs failed (their logs above)"

n=$(find "$RECORDS" -name pseudo_oe_settings.csv 2>/dev/null | wc -l)
if [ "$n" -lt "$EXPECT" ]; then
    say "$n of $EXPECT records: the report waits for the rest"
    exit 1
fi
say "report: the rule applied to the $n records"
"$PY" tools/replication_records.py report "$RECORDS" --out "$TABLES" --expect "$EXPECT" "${REPORT_HOW[@]}"
