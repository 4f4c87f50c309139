#!/usr/bin/env bash
# The papers from face weights on 2 CPU cores, as declared in docs/journal/papers_face_weights.md:
# dlib's face network fine-tuned (the `face` engine) at 112 px under bf16, on a fixed stratified
# subset of 10,000 FERPlus training images. Resumable: run it again in each session until it
# prints its tables; every stage and combination already finished is skipped.
#
#   tools/papers_face_cpu.sh               # 1. noisy-label core grid, 2. open-set table (Surprise first)
#   tools/papers_face_cpu.sh noisy         # the noisy-label grid only
#   tools/papers_face_cpu.sh openset       # the open-set table only
#   DEVICE=cuda tools/papers_face_cpu.sh   # the same grid on a GPU (the papers' full settings are
#                                          # `ferlib.run reproduce noisy|openset --engine face`)
#
# Settings (environment): DEVICE (cpu), DATA_ROOT (../shared/data/ferplus), OUTPUTS (outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${DEVICE:-cpu}"
DATA_ROOT="${DATA_ROOT:-../shared/data/ferplus}"
OUTPUTS="${OUTPUTS:-outputs}"
PY="${PY:-.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
COMMON=(--dataset ferplus --data-root "$DATA_ROOT" --engine face --device "$DEVICE" --executor python
    -p amp=True -p "data_options={'max_train': 10000}")

# The pilot (ce and rul, symmetric 30%, seed 0, 20 epochs) fixed the grid's schedule by the
# declared rule: 20 epochs if cross-entropy's noisy-validation accuracy reached its plateau
# (best epoch before the last, or the last three epochs within one point), else 30.
pilot_epochs() {
    "$PY" - "$OUTPUTS/noisy_face10k/05_noisy_labels/ce/symmetric-0.3/seed0/01_close_set/history.csv" <<'PYEOF'
import sys
from pathlib import Path

import pandas as pd

path = Path(sys.argv[1])
if not path.is_file():
    sys.exit(f"{path}: the pilot has not run; run the pilot command of docs/journal/papers_face_weights.md first")
h = pd.read_csv(path)
if len(h) < 20:
    sys.exit(f"{path}: the pilot stopped at epoch {len(h)} of 20; run it again to finish it")
best = int(h.loc[h["val_acc"].idxmax(), "epoch"])
last3 = h["val_acc"].iloc[-3:]
plateau = best < int(h["epoch"].iloc[-1]) or float(last3.max() - last3.min()) < 0.01
print(20 if plateau else 30)
PYEOF
}

noisy() {
    local epochs
    epochs="$(pilot_epochs)"
    echo "== $(date -u +%H:%M:%S) noisy-label core grid, $epochs epochs"
    "$PY" -m ferlib.run stage 05 "${COMMON[@]}" --outputs "$OUTPUTS" --run noisy_face10k \
        -p "methods=['ce', 'rul', 'esr_div']" \
        -p "noise=[{'kind': 'symmetric', 'rate': 0.3}, {'kind': 'annotator'}]" \
        -p "seeds=[0, 1, 2]" -p "epochs=$epochs"
}

openset() {
    # Surprise first (the paper's headline class), then the others; seeds 0-2; every detector
    # of `reproduce openset` (the paper's cycle method, released, PROSER, ERD, pseudo_oe, tknn and
    # the post-hoc baselines), the frozen ferplus preset for pseudo_oe, both protocols.
    echo "== $(date -u +%H:%M:%S) open-set table from face weights"
    "$PY" -m ferlib.run reproduce openset "${COMMON[@]}" --seeds 0 1 2 \
        --outputs "$OUTPUTS/reproduce_openset_ferplus_face10k"
}

case "${1:-all}" in
    noisy) noisy ;;
    openset) openset ;;
    all) noisy && openset ;;
    *) echo "usage: $0 [noisy|openset|all]" >&2; exit 2 ;;
esac
