"""Write notebooks/01..05 from this one source (run after editing; outputs stay empty).

Each notebook's ``parameters`` cell and its stage call are generated from the signature of
the stage function behind it (``ferlib.run.STAGES``): every parameter, its default as a
Python literal (tuples become lists, as papermill and ``-p`` give lists), its type as an
annotation papermill can parse, and the first line of its description in the function's
numpy-style ``Parameters`` docstring as a comment on the line above (a trailing comment
holding ``=`` makes papermill drop the line). So the notebooks, ``--executor python`` and
``-p`` share one contract, and a parameter added to a stage function reaches its notebook by
re-running this script (``make notebooks``); tests/test_notebooks.py fails when the committed
notebooks differ from what this script writes.

Keeping the notebooks' text here makes reviews of notebook changes readable diffs.
Usage: python tools/make_notebooks.py [--check]
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout's ferlib
    sys.path.insert(0, str(ROOT))

from ferlib.params import parameter_docs, signature_parameters  # noqa: E402
from ferlib.run import STAGES, Stage  # noqa: E402

KERNEL = {"display_name": "Python (ferkit)", "language": "python", "name": "ferkit"}
WIDTH = 100  # the stage call is wrapped at this width

# --------------------------------------------------------------------------------------------
# annotations papermill can read: its parser accepts `name: Annotation = value` only when the
# annotation is made of word characters, brackets, commas and spaces (no "|", no dots), so
# `str | None` is written `Optional[str]` and the typing names are imported in the cell.

_BUILTIN = {"int": "int", "float": "float", "bool": "bool", "str": "str", "bytes": "bytes"}
#: containers by the name the notebook uses (tuples and sequences hold lists in a notebook)
_CONTAINERS = {
    "list": "List",
    "List": "List",
    "tuple": "List",
    "Tuple": "List",
    "Sequence": "List",
    "set": "List",
    "frozenset": "List",
    "Iterable": "List",
    "dict": "Dict",
    "Dict": "Dict",
    "Mapping": "Dict",
    "MutableMapping": "Dict",
}
TYPING_NAMES = ("Any", "Dict", "List", "Optional", "Union")


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_members(node.left) + _union_members(node.right)
    if isinstance(node, ast.Subscript) and _name(node.value) in ("Union", "Optional"):
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        extra = [ast.Constant(None)] if _name(node.value) == "Optional" else []
        return [m for item in items for m in _union_members(item)] + extra
    return [node]


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # typing.Any, collections.abc.Sequence
        return node.attr
    return None


def _render(node: ast.expr) -> str:
    members = _union_members(node)
    if len(members) > 1:
        optional = any(isinstance(m, ast.Constant) and m.value is None for m in members)
        rest = list(dict.fromkeys(_render(m) for m in members if not (isinstance(m, ast.Constant) and m.value is None)))
        if "Any" in rest:
            return "Any"
        inner = rest[0] if len(rest) == 1 else f"Union[{', '.join(rest)}]"
        return f"Optional[{inner}]" if optional else inner
    if isinstance(node, ast.Constant):
        if node.value is None:
            return "None"
        if isinstance(node.value, str):  # a quoted annotation
            return _render(ast.parse(node.value, mode="eval").body)
        return "Any"
    if isinstance(node, ast.Subscript):
        base = _CONTAINERS.get(_name(node.value) or "")
        if base is None:
            return "Any"
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        items = [i for i in items if not (isinstance(i, ast.Constant) and i.value is Ellipsis)]
        if base == "List":
            kinds = list(dict.fromkeys(_render(i) for i in items))
            return f"List[{kinds[0]}]" if len(kinds) == 1 else "List[Any]"
        return f"Dict[{', '.join(_render(i) for i in items[:2])}]" if len(items) == 2 else "Dict"
    name = _name(node) or ""
    if name in _BUILTIN:
        return _BUILTIN[name]
    if name in _CONTAINERS:
        return _CONTAINERS[name]
    return "Any"  # a class of the kit (Path, Emotion...): the notebook holds plain values


def notebook_annotation(annotation: Any) -> str:
    """A signature annotation as papermill-readable text: ``"str | None"`` -> ``"Optional[str]"``,
    ``"Sequence[str]"`` -> ``"List[str]"``, ``"dict[str, dict] | None"`` -> ``"Optional[Dict[str, Dict]]"``."""
    if annotation is inspect.Parameter.empty:
        return "Any"
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return _render(ast.parse(text, mode="eval").body)


def notebook_literal(value: Any) -> str:
    """A default as Python source the notebook can hold (tuples become lists, recursively)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list, set, frozenset)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    value = plain(value)
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(f"default {value!r} is not a Python literal; a stage parameter's default must be one")
    return text


def parameters_cell(func: Callable[..., Any]) -> str:
    """The ``parameters`` cell: one annotated assignment per parameter of ``func``, its help
    line above it, the typing names it uses imported first."""
    docs = parameter_docs(func)
    body, used = [], set()
    for name, param in signature_parameters(func).items():
        if param.default is inspect.Parameter.empty:
            raise ValueError(f"{func.__qualname__}: parameter {name} has no default")
        annotation = notebook_annotation(param.annotation)
        used.update(t for t in TYPING_NAMES if t in annotation.replace("[", " ").replace(",", " ").split())
        help_line = docs[name].help if name in docs else ""
        if help_line:
            body.append(f"# {help_line}")
        body.append(f"{name}: {annotation} = {notebook_literal(param.default)}")
    header = [f"from typing import {', '.join(sorted(used))}", ""] if used else []
    return "\n".join(header + body)


def stage_call(func: Callable[..., Any], result: str) -> str:
    """``result = module.function(a=a, b=b, ...)`` with every parameter of ``func`` forwarded."""
    module = func.__module__.rsplit(".", 1)[-1]
    args = ", ".join(f"{n}={n}" for n in signature_parameters(func))
    wrapped = textwrap.wrap(args, WIDTH - 4, break_long_words=False, break_on_hyphens=False)
    return f"{result} = {module}.{func.__name__}(\n" + "\n".join("    " + line for line in wrapped) + ")"


# --------------------------------------------------------------------------------------------
# the notebooks: text around the generated cells


@dataclass(frozen=True)
class Page:
    """One notebook: its stage, the markdown on top, what the call's result is named, the
    imports of the call cell, and the cells after the call."""

    stage: str
    intro: str
    result: str
    imports: str
    after_call: str = ""
    cells: tuple[tuple[str, str], ...] = ()


PAGES = (
    Page(
        stage="01_train_close_set",
        intro="""# 01 · Train the close-set model

Trains the close-set network on the training split with the open class held out (labels
re-indexed to 0..K-1), selects the best epoch on a validation split (the data set's own, or
carved from training data; never the test split), and tests it on the close-set test images.
The defaults are the kit's best measured from-scratch engine (`smallface_deep`, recipe
`fast_affine`, 48 px, 40 epochs); `python -m ferlib.run --engine face` fine-tunes dlib's
face-recognition network instead, `--quick` makes every stage cheap (`ferlib/engines.py`).
Notebooks 01-04 share one run folder, `run_dir` (default `outputs/lab`, this notebook's own:
`make demo` writes `outputs/demo`).

**Reads** the data set under `data_root`. **Writes** `run_dir/01_close_set/` (`best.pt`,
`last.pt` for resuming, `history.csv`, `results.json`) and `run_dir/figures/`.

The parameters cell below is generated from `ferlib.stages.train_close_set` (its signature and
docstring): `python -m ferlib.run ... -p key=value` sets the same names.""",
        result="results",
        imports="from pathlib import Path\n\nfrom ferlib import plots, stages",
        after_call='figures = Path(run_dir) / "figures"',
        cells=(
            ("md", "## Learning curves and test confusion matrix"),
            (
                "code",
                """fig = plots.learning_curves(results["history"])
plots.save_figure(fig, figures / "learning_curves")
fig = plots.confusion_matrix_plot(results["confusion"], results["class_names"])
plots.save_figure(fig, figures / "confusion_matrix")
print(f"test accuracy {results['test_acc']:.4f}, best epoch {results['best_epoch']}")""",
            ),
            (
                "md",
                """### What you should see

With `make demo` (the synthetic set, `--quick`: `smallface`, 32 px, 6 epochs, Surprise open):
a validation curve that climbs for all 6 epochs and a test accuracy of about .84 (.838 on
2 CPU cores, seed 0). With the defaults on FERPlus (`smallface_deep`, 48 px, 40 epochs): about
.84-.85 on the 6 close classes.""",
            ),
        ),
    ),
    Page(
        stage="02_predict_pseudo_labels",
        intro="""# 02 · Predict pseudo labels

Runs the close-set model on the evaluation set (the test split followed by the open
class's training images), row by row, so each pseudo label is the prediction for that very
image. Shows how the open samples' pseudo labels spread over the close classes: the paper
assumes they spread like symmetric noise; on real data they often do not.

**Reads** `run_dir/01_close_set/best.pt`. **Writes** `run_dir/02_pseudo_labels/`
(`pseudo_labels.csv` with path, label, pseudo label, is_open and logits; `outputs.npz` with
features) and `run_dir/figures/pseudo_label_spread_*`.

The parameters cell below is generated from `ferlib.stages.predict_pseudo_labels`.""",
        result="table",
        imports="from pathlib import Path\n\nfrom ferlib import metrics, plots, stages",
        after_call='figures = Path(run_dir) / "figures"\ntable.head()',
        cells=(
            (
                "md",
                """## Where do the open samples' pseudo labels go?

`honest`: index-aligned (this kit). `reference`: the released code's shuffled-loader
misalignment, reproduced on purpose to show how much of the published result depends on it.""",
            ),
            (
                "code",
                """for protocol in ("honest", "reference"):
    data = stages.load_openset_data(run_dir, protocol, seed=seed)
    display(metrics.pseudo_label_spread_table(data.table, list(data.class_names)).assign(protocol=protocol))
    fig = plots.pseudo_label_spread(data.table, list(data.class_names))
    fig.suptitle(f"{protocol} protocol", fontsize=8)
    plots.save_figure(fig, figures / f"pseudo_label_spread_{protocol}")""",
            ),
        ),
    ),
    Page(
        stage="03_detect_open_set",
        intro="""# 03 · Detect open-set samples

Scores every evaluation sample with the post-hoc baselines on the close-set model (max
softmax, max logit, energy, entropy, Mahalanobis, kNN), our transductive detectors, and the
paper's method (attention-consistency training on the pseudo labels with cycle training of two
networks), under both protocols. Every score is *higher = more likely open*; metrics take the
close set as positive.

**Reads** `run_dir/02_pseudo_labels/`. **Writes** `run_dir/03_detect/scores_<protocol>.csv`
(per-sample scores), `run_dir/metrics.csv` (AUROC, FPR@TPR95, AUPR per detector and protocol).

The parameters cell below is generated from `ferlib.stages.detect_open_set`; per-detector
settings go in `detector_params`, e.g. `{'tknn': {'k': 10}, 'cycle': {'lam': 0}}`.""",
        result="metrics",
        imports="from pathlib import Path\n\nfrom ferlib import plots, stages",
        after_call="""figures = Path(run_dir) / "figures"
display(metrics.round(3))
for warning in metrics.attrs.get("warnings", []):  # e.g. a close-set model near chance
    print(f"WARNING: {warning}")""",
        cells=(
            (
                "code",
                """for protocol in protocols:
    scores = stages.load_scores(run_dir, protocol, eval_subset)
    fig = plots.score_histograms(scores, detectors, protocol=protocol)
    plots.save_figure(fig, figures / f"score_histograms_{protocol}")""",
            ),
            (
                "md",
                """### What you should see

`pseudo_oe` is the kit's detector, `cycle` the paper's method, the rest baselines. With
`make demo` (synthetic set, `--quick`, seed 0, measured once on 2 CPU cores), honest AUROC:
tknn .97, `pseudo_oe` .94, kNN .95, energy .90, max softmax .86, `cycle` .63, `contrast` .55;
under the reference protocol every detector falls to .55-.68. On FERPlus the order is
`pseudo_oe` > tknn > post-hoc (docs/RESULTS.md).""",
            ),
        ),
    ),
    Page(
        stage="04_visualise",
        intro="""# 04 · Visualise

Redraws every figure of a finished run from its files alone (no model, no training, no data
set): learning curves and confusion matrix, and per protocol the score histograms of every
detector (AUROC under each panel), the paper's per-sample loss histogram (`cycle`), the ROC
curves, the pseudo-label spread, and an embedding (UMAP, or t-SNE as in the paper) of the
close-set model's features beside the cycle detector's, coloured by true class with the open
samples as red crosses. With `results_glob`, it also gathers the runs of a sweep into the
paper's table; with `compare`, it sets sweeps side by side (from scratch and from face
weights, say).

**Reads** `run_dir/01_close_set/`, `run_dir/02_pseudo_labels/`, `run_dir/03_detect/`
(`scores_<protocol>.csv`, `detector_features_<protocol>.npy`) and `run_dir/metrics.csv`.
**Writes** `run_dir/figures/` (PNG at 300 dpi + PDF; embedding coordinates as `.npz`) and,
with `results_glob`, the tables beside the runs (`outputs/tables/`: CSV, Markdown, LaTeX);
with `compare`, `<dataset>_comparison.{md,png,pdf}` there too.

The parameters cell below is generated from `ferlib.report.visualise`.""",
        result="figures",
        imports="from IPython.display import Markdown, display\n\nfrom ferlib import report",
        after_call="""print(f"{len(figures)} figures, each shown above and saved as PNG + PDF under {run_dir}/figures:")
print(", ".join(figures))""",
        cells=(
            (
                "md",
                """## Reproduction table

With `results_glob` set, the finished runs it matches (e.g. the runs of
`python -m ferlib.run sweep`) are gathered into the paper's table: one row per open class and
the mean, our detectors as mean ± std over seeds beside the published numbers, best in bold.
Written beside the runs (`outputs/tables/` for the default `run_dir`) as
`<dataset>_<metric>_<protocol>.{csv,md,tex}` with the same table as
a bar chart (`.png`, `.pdf`); runs without `metrics.csv` are skipped. The command line does
the same: `python -m ferlib.run tables "outputs/ferplus_*"`.""",
            ),
            (
                "code",
                """if results_glob:  # visualise wrote the tables: table_<stem> -> [png, pdf, csv, md, tex]
    for protocol in protocols:
        for name, paths in figures.items():
            if name.startswith("table_") and name.endswith(f"_auroc_{protocol}"):
                stem = name[len("table_"):]
                display(Markdown(f"**AUROC, {protocol} protocol** (`{stem}`)\\n\\n" + paths[3].read_text()))
else:
    print("results_glob is None: set it (e.g. 'outputs/ferplus_open-*_seed*') to build the table")""",
            ),
            (
                "md",
                """## Sweeps side by side

With `compare` set to two or more sweeps (e.g.
`['outputs/ferplus_open-*', 'outputs/reproduce_openset_ferplus_face/*']`), one row per
detector with each sweep's honest AUROC, FPR@95 and reference AUROC (mean over open classes ±
std over seeds), each sweep headed by its network, input size and epochs; the bars above are
the same honest AUROCs. The command line does the same: `python -m ferlib.run tables --compare
SWEEP_A SWEEP_B`.""",
            ),
            (
                "code",
                """for name, paths in figures.items():  # comparison_<dataset> -> [png, pdf, md]
    if name.startswith("comparison_"):
        display(Markdown(paths[2].read_text()))
if not compare:
    print("compare is None: set it to two or more sweeps to set them side by side")""",
            ),
        ),
    ),
    Page(
        stage="05_noisy_labels",
        intro="""# 05 · Noisy-label benchmark

Trains every method (cross-entropy, RUL, ESR and MA-Net with and without attention
diversity) under every label-noise setting (clean, symmetric, pair, and annotator votes where
the data set has them) and seed, each as a stage 01 run over every class of the data set.
Then it asks each trained model which of its training labels were flipped (the loss at the
given label, the field's small-loss baseline; RUL's uncertainty; the branches' disagreement),
follows how fast each method fits the flipped labels (memorisation) and draws what the
branches attend to. Standalone:
it reads no other stage's files, and `python -m ferlib.run pipeline` runs it only when named
(`stage 05` or `--stages 05`). A finished combination is skipped, a killed one resumes.

**Reads** the data set under `data_root`. **Writes** `run_dir/05_noisy_labels/`:
`<method>/<noise>/seed<k>/` (a stage 01 run each, with `flip_scores.npz` and `attention.npz`),
`results.csv` (one row per run), `summary.csv` (mean and std over seeds), `detection.csv`,
`detection_summary.csv`, `memorisation.csv`, the tables in the papers' layout with the published
numbers beside (`noisy_tables.md`) and `figures/`. With `compare_with`, other finished
benchmarks (e.g. the same grid from scratch beside one from face weights) stand beside this one
in those tables and in `noisy_accuracy_compared.{png,pdf}`; `python -m ferlib.run tables RUN_A
RUN_B` does the same from the command line.

The parameters cell below is generated from `ferlib.noisy.noisy_label_benchmark`; a
method's head and objective settings go in `method_params`, e.g.
`{'esr_div': {'objective_params': {'diversity': 0.5}}}`.""",
        result="summary",
        imports="from pathlib import Path\n\nimport pandas as pd\n"
        "from IPython.display import display\n\nfrom ferlib import noisy",
        after_call="out = Path(run_dir) / noisy.FOLDER\nsummary.round(3)",
        cells=(
            (
                "md",
                """## Which training labels were flipped?

The call above shows every figure it draws (test accuracy against the noise rate, the
flipped-label scores, per-branch attention). Below: AUROC of each detector's score (higher =
flipped) on the training rows, flipped labels as the positive class.""",
            ),
            (
                "code",
                """detection = pd.read_csv(out / "detection_summary.csv")
display(detection.round(3))""",
            ),
            (
                "md",
                """## The papers' layout

Test accuracy per method and noise setting (mean ± std over seeds, seeds in brackets) with the
published clean-label accuracy beside, the flipped-label AUROCs, and the memorisation share;
the benchmarks in `compare_with` beside this one.""",
            ),
            (
                "code",
                """from IPython.display import Markdown

Markdown((out / "noisy_tables.md").read_text())""",
            ),
        ),
    ),
)


def _stage(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r} in ferlib.run.STAGES")


def build(page: Page) -> nbf.NotebookNode:
    """The notebook of ``page``, its parameters cell and stage call from the stage's signature."""
    func = _stage(page.stage).function()
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNEL
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbf.v4.new_markdown_cell(page.intro))
    params = nbf.v4.new_code_cell(parameters_cell(func))
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    call = "\n\n".join(part for part in (page.imports, stage_call(func, page.result), page.after_call) if part)
    nb.cells.append(nbf.v4.new_code_cell(call))
    for kind, text in page.cells:
        nb.cells.append(nbf.v4.new_markdown_cell(text) if kind == "md" else nbf.v4.new_code_cell(text))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{page.stage[:2]}-{i:02d}"
    return nb


def notebook_path(page: Page) -> Path:
    return ROOT / _stage(page.stage).notebook


def stale_notebooks() -> list[Path]:
    """Committed notebooks that differ from what :func:`build` makes now."""
    stale = []
    for page in PAGES:
        path = notebook_path(page)
        current = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if current != json.loads(nbf.writes(build(page))):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a committed notebook differs from its source"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_notebooks()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run: python tools/make_notebooks.py)")
        return 1 if stale else 0
    for page in PAGES:
        path = notebook_path(page)
        nbf.write(build(page), path)
        print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
