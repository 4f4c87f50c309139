"""Write notebooks/01..04 from this one source (run after editing; outputs stay empty).

Keeping the notebooks' text here makes reviews of notebook changes readable diffs.
Usage: python tools/make_notebooks.py
"""

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"display_name": "Python (ferkit)", "language": "python", "name": "ferkit"}

COMMON = '''dataset = "synthetic"      # synthetic | ferplus | rafdb | affectnet | folders
data_root = None           # None: data/<dataset> (synthetic: generated there on first use)
open_class = "surprise"    # held-out expression, or None for a close-set model
seed = 0
device = "cpu"             # "cuda" on a GPU machine
run_dir = "outputs/demo"   # every file of this run goes under here'''

NOTEBOOKS = {
    "01_train_close_set": [
        ("md", """# 01 · Train the close-set model

Trains a ResNet on the training split with the open class held out (labels re-indexed to
0..K-1), selects the best epoch on a validation split (the data set's own, or carved from
training data; never the test split), and tests it on the close-set test images.

**Reads** the data set under `data_root`. **Writes** `run_dir/01_close_set/` (`best.pt`,
`last.pt` for resuming, `history.csv`, `results.json`) and `run_dir/figures/`."""),
        ("params", COMMON + '''
arch = "resnet18"          # resnet18 | resnet50
input_size = 48            # 48..224 px; below 160 px a small-input stem is used
epochs = 10
batch_size = 128
lr = 1e-3
pretrained = None          # path to a state dict (e.g. resnet18_msceleb.pth); None = from scratch'''),
        ("code", '''from pathlib import Path
from ferlib import plots, stages

results = stages.train_close_set(
    dataset=dataset, data_root=data_root, open_class=open_class, seed=seed, device=device,
    run_dir=run_dir, arch=arch, input_size=input_size, epochs=epochs, batch_size=batch_size,
    lr=lr, pretrained=pretrained)
figures = Path(run_dir) / "figures"'''),
        ("md", "## Learning curves and test confusion matrix"),
        ("code", '''fig = plots.learning_curves(results["history"])
plots.save_figure(fig, figures / "learning_curves")
fig = plots.confusion_matrix_plot(results["confusion"], results["class_names"])
plots.save_figure(fig, figures / "confusion_matrix")
print(f"test accuracy {results['test_acc']:.4f}, best epoch {results['best_epoch']}")'''),
    ],
    "02_predict_pseudo_labels": [
        ("md", """# 02 · Predict pseudo labels

Runs the close-set model on the evaluation set (the test split followed by the open
class's training images), row by row, so each pseudo label is the prediction for that very
image. Shows how the open samples' pseudo labels spread over the close classes: the paper
assumes they spread like symmetric noise; on real data they often do not.

**Reads** `run_dir/01_close_set/best.pt`. **Writes** `run_dir/02_pseudo_labels/`
(`pseudo_labels.csv` with path, label, pseudo label, is_open and logits; `outputs.npz` with
features) and `run_dir/figures/pseudo_label_spread_*`."""),
        ("params", COMMON + '''
arch = "resnet18"
input_size = 48'''),
        ("code", '''from pathlib import Path
from ferlib import plots, stages

table = stages.predict_pseudo_labels(
    dataset=dataset, data_root=data_root, open_class=open_class, seed=seed, device=device,
    run_dir=run_dir, arch=arch, input_size=input_size)
figures = Path(run_dir) / "figures"
table.head()'''),
        ("md", """## Where do the open samples' pseudo labels go?

`honest`: index-aligned (this kit). `reference`: the released code's shuffled-loader
misalignment, reproduced on purpose to show how much of the published result depends on it."""),
        ("code", '''for protocol in ("honest", "reference"):
    data = stages.load_openset_data(run_dir, protocol, seed=seed)
    display(plots.pseudo_label_spread_table(data.table, list(data.class_names)).assign(protocol=protocol))
    fig = plots.pseudo_label_spread(data.table, list(data.class_names))
    fig.suptitle(f"{protocol} protocol", fontsize=8)
    plots.save_figure(fig, figures / f"pseudo_label_spread_{protocol}")'''),
    ],
    "03_detect_open_set": [
        ("md", """# 03 · Detect open-set samples

Scores every evaluation sample with the post-hoc baselines on the close-set model (max
softmax, max logit, energy, entropy, Mahalanobis, kNN) and with the paper's method
(attention-consistency training on the pseudo labels with cycle training of two networks),
under both protocols. Every score is *higher = more likely open*; metrics take the close
set as positive.

**Reads** `run_dir/02_pseudo_labels/`. **Writes** `run_dir/03_detect/scores_<protocol>.csv`
(per-sample scores), `run_dir/metrics.csv` (AUROC, FPR@TPR95, AUPR per detector and protocol)."""),
        ("params", COMMON + '''
input_size = 48
protocols = ["honest", "reference"]
detectors = ["msp", "max_logit", "energy", "entropy", "mahalanobis", "knn", "cycle"]
eval_subset = "all"        # "all" (paper) | "test": the test split only
cycle = {}                 # CycleConfig overrides: cycles, epochs_per_cycle, select_ratio, lam, ...'''),
        ("code", '''from pathlib import Path
from ferlib import plots, stages

metrics = stages.detect_open_set(
    dataset=dataset, data_root=data_root, open_class=open_class, seed=seed, device=device,
    run_dir=run_dir, input_size=input_size, protocols=protocols, detectors=detectors,
    eval_subset=eval_subset, cycle=cycle)
figures = Path(run_dir) / "figures"
metrics.round(3)'''),
        ("code", '''for protocol in protocols:
    scores = stages.load_scores(run_dir, protocol)
    fig = plots.score_histograms(scores, detectors, protocol=protocol)
    plots.save_figure(fig, figures / f"score_histograms_{protocol}")'''),
    ],
    "04_visualise": [
        ("md", """# 04 · Visualise

Redraws every figure of a finished run from its files alone (no model, no training, no data
set): learning curves and confusion matrix, and per protocol the score histograms of every
detector (AUROC under each panel), the paper's per-sample loss histogram (`cycle`), the ROC
curves, the pseudo-label spread, and an embedding (UMAP, or t-SNE as in the paper) of the
close-set model's features beside the cycle detector's, coloured by true class with the open
samples as red crosses. Optionally gathers the runs of a sweep into the paper's table.

**Reads** `run_dir/01_close_set/`, `run_dir/02_pseudo_labels/`, `run_dir/03_detect/`
(`scores_<protocol>.csv`, `detector_features_<protocol>.npy`) and `run_dir/metrics.csv`.
**Writes** `run_dir/figures/` (PNG at 300 dpi + PDF; embedding coordinates as `.npz`) and,
with `results_glob`, `outputs/tables/` (CSV, Markdown, LaTeX)."""),
        ("params", COMMON + '''
protocols = ["honest", "reference"]
embed_method = "umap"      # or "tsne"
embed_max_points = 3000    # embeddings of at most this many samples (drawn with seed)
results_glob = None        # e.g. "outputs/ferplus_open-*_seed*": gather a sweep into the paper's table'''),
        ("code", '''from IPython.display import Image, Markdown, display
from ferlib import report

figures = report.visualise(run_dir=run_dir, protocols=protocols, embed_method=embed_method,
                           embed_max_points=embed_max_points, seed=seed)
for name, paths in figures.items():
    if name.startswith(("score_histograms_", "embedding_")):
        print(name)
        display(Image(filename=str(paths[0]), width=700))'''),
        ("md", """## Reproduction table

With `results_glob` set, the finished runs it matches (e.g. the runs of
`python -m ferlib.run sweep`) are gathered into the paper's table: one row per open class and
the mean, our detectors as mean ± std over seeds beside the published numbers, best in bold.
Written beside the runs (`outputs/tables/` for the default `run_dir`) as
`<dataset>_<metric>_<protocol>.{csv,md,tex}` with the same table as
a bar chart (`.png`, `.pdf`); runs without `metrics.csv` are skipped. The command line does
the same: `python -m ferlib.run tables "outputs/ferplus_*"`."""),
        ("code", '''if results_glob:
    from pathlib import Path

    from ferlib.tables import to_markdown

    tables_dir = Path(run_dir).parent / "tables"  # beside the runs: outputs/tables by default
    tables = report.collect_results(results_glob, out_dir=tables_dir)
    for stem, table in tables.items():
        if table.attrs["metric"] == "auroc" and table.attrs["protocol"] in ("honest", "reference"):
            display(Markdown(f"**AUROC, {table.attrs['protocol']} protocol** (`{stem}`)\\n\\n"
                             + to_markdown(table)))
            display(Image(filename=f"{tables_dir}/{stem}.png", width=700))
else:
    print("results_glob is None: set it (e.g. 'outputs/ferplus_open-*_seed*') to build the table")'''),
    ],
}


def build(name: str, cells) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in cells:
        if kind == "md":
            nb.cells.append(nbf.v4.new_markdown_cell(text))
        else:
            cell = nbf.v4.new_code_cell(text)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nbf.write(build(name, cells), path)
        print("wrote", path.relative_to(ROOT))
