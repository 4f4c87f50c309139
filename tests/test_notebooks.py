"""The notebooks are views of the stage functions: one parameter contract, one result.

Each notebook's parameters cell and stage call are generated from its stage function's
signature and docstring (tools/make_notebooks.py); these tests fail when a notebook drifts
from its function (a parameter missing, another default, a call that does not forward a
parameter), when papermill cannot read a parameter line, and when the papermill and python
executors give different metrics on the same tiny run.
"""

from __future__ import annotations

import ast
import inspect
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from scripts import load_script

from ferlib.params import parameter_docs, signature_parameters
from ferlib.run import STAGES, main

ROOT = Path(__file__).resolve().parents[1]
papermill = pytest.importorskip("papermill")


def _generator():
    return load_script("tools/make_notebooks.py")


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _cells(stage) -> list[dict]:
    return json.loads((ROOT / stage.notebook).read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_parameters_are_the_stage_signature(stage, caplog):
    """Names, order, defaults and a type for every parameter, read the way papermill reads
    them, with no "Unable to parse line" warning (the old cells lost `pretrained`'s type)."""
    func = stage.function()
    with caplog.at_level(logging.WARNING, logger="papermill"):
        declared = papermill.inspect_notebook(str(ROOT / stage.notebook))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    params = signature_parameters(func)
    assert list(declared) == list(params)
    for name, param in params.items():
        entry = declared[name]
        assert entry["inferred_type_name"] not in ("None", ""), f"{stage.name}: {name} has no type"
        assert ast.literal_eval(entry["default"]) == _plain(param.default), f"{stage.name}: {name}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_call_forwards_every_parameter(stage):
    """The stage call passes each parameter by its own name (the old notebooks dropped
    stem, weight_decay, lr_gamma, val_fraction, amp, cache_dir and the detector settings)."""
    func = stage.function()
    calls = [
        node
        for cell in _cells(stage)
        if cell["cell_type"] == "code"
        for node in ast.walk(ast.parse("".join(cell["source"])))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == func.__name__
    ]
    assert len(calls) == 1, f"{stage.name}: one call of {func.__name__} expected"
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert list(keywords) == list(signature_parameters(func))
    assert all(isinstance(v, ast.Name) and v.id == k for k, v in keywords.items())


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_help_comment_sits_above_each_assignment(stage):
    cell = next(c for c in _cells(stage) if "parameters" in c["metadata"].get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    docs = parameter_docs(stage.function())
    for name in signature_parameters(stage.function()):
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: "))
        assert "#" not in lines[index], f"trailing comment on {lines[index]!r}"
        assert lines[index - 1] == f"# {docs[name].help}"


def test_committed_notebooks_are_what_the_generator_writes():
    """Run `python tools/make_notebooks.py` (or `make notebooks`) after changing a stage
    function's signature or docstring."""
    gen = _generator()
    assert gen.stale_notebooks() == []
    assert {gen.notebook_path(p) for p in gen.PAGES} == {ROOT / s.notebook for s in STAGES}


def test_generator_annotations_and_literals():
    gen = _generator()
    assert gen.notebook_annotation("str | None") == "Optional[str]"
    assert gen.notebook_annotation("Sequence[str]") == "List[str]"
    assert gen.notebook_annotation("tuple[str, ...]") == "List[str]"
    assert gen.notebook_annotation("dict[str, dict] | None") == "Optional[Dict[str, Dict]]"
    assert gen.notebook_annotation("int | float") == "Union[int, float]"
    assert gen.notebook_annotation("str | os.PathLike | None") == "Any"  # Any covers None
    assert gen.notebook_annotation(inspect.Parameter.empty) == "Any"
    assert gen.notebook_literal(("a", ("b", 1))) == "['a', ['b', 1]]"
    with pytest.raises(ValueError, match="not a Python literal"):
        gen.notebook_literal(object())


# ------------------------------------------------------------------------------ executors
def _kernel_or_skip() -> None:
    from ferlib.run import DEFAULT_KERNEL, available_kernels

    if DEFAULT_KERNEL not in available_kernels():
        pytest.skip(f"Jupyter kernel {DEFAULT_KERNEL!r} not installed (run `make venv`)")


@pytest.mark.slow
def test_papermill_and_python_executors_give_identical_metrics(tmp_path):
    """The same tiny run (stages 01-03) through both executors gives the same metrics table,
    so `make demo` (papermill) and `--executor python` agree; the old notebooks ignored
    weight_decay and stem, so their model and metrics differed."""
    _kernel_or_skip()
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=140, n_valid=35, n_test=70, seed=0))
    common = [
        "pipeline",
        "--dataset",
        "synthetic",
        "--data-root",
        str(root),
        "--open-class",
        "surprise",
        "--stages",
        "01",
        "02",
        "03",
        "--outputs",
        str(tmp_path / "outputs"),
        "-p",
        "epochs=1",
        "-p",
        "input_size=32",
        "-p",
        "batch_size=32",
        "-p",
        "progress=False",
        "-p",
        f"cache_dir={tmp_path / 'cache'}",
        "-p",
        "detectors=['msp', 'energy', 'knn', 'tknn']",
        # parameters the old notebooks 01-02 dropped although the manifest recorded them
        "-p",
        "weight_decay=0.05",
        "-p",
        "stem=imagenet",
    ]
    assert main([*common, "--run", "py", "--executor", "python"]) == 0
    assert main([*common, "--run", "pm", "--executor", "papermill"]) == 0
    out = tmp_path / "outputs"
    assert (out / "pm" / "notebooks" / "03_detect_open_set.ipynb").exists()
    python_metrics = pd.read_csv(out / "py" / "metrics.csv")
    papermill_metrics = pd.read_csv(out / "pm" / "metrics.csv")
    assert set(python_metrics["detector"]) == {"msp", "energy", "knn", "tknn"}
    pd.testing.assert_frame_equal(papermill_metrics, python_metrics)
    for name in ("01_train_close_set", "02_predict_pseudo_labels", "03_detect_open_set"):
        py_record = json.loads((out / "py" / "stages" / f"{name}.json").read_text())
        pm_record = json.loads((out / "pm" / "stages" / f"{name}.json").read_text())
        # the same applied values (run_dir aside) and so the same parameter hash
        assert py_record["params_hash"] == pm_record["params_hash"]


def test_progress_bars_are_widgets_in_a_notebook(tmp_path, monkeypatch):
    """ferlib.progress uses tqdm.auto: in a kernel of JupyterLab (which names the session in
    JPY_SESSION_NAME) it draws an ipywidgets bar, which JupyterLab renders; without ipywidgets
    tqdm warned "IProgress not found" and fell back to text. In papermill's kernel, whose
    widgets nobody renders (the log froze at 0%), it writes plain progress lines instead."""
    _kernel_or_skip()
    import nbformat

    from ferlib.run import DEFAULT_KERNEL

    nb = nbformat.v4.new_notebook()
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import warnings\n"
            "warnings.simplefilter('error')  # tqdm's IProgress warning would fail the cell\n"
            "from ferlib.progress import progress_bar\n"
            "bar = progress_bar(range(3), desc='cell loop')\n"
            "list(bar)\n"
            "from tqdm.notebook import tqdm as notebook_tqdm\n"
            "print('widget bar:', isinstance(bar, notebook_tqdm))"
        )
    )
    source = tmp_path / "bar.ipynb"
    nbformat.write(nb, str(source))
    monkeypatch.delenv("FERKIT_PROGRESS", raising=False)
    texts = {}
    for front_end in ("jupyterlab", "papermill"):
        if front_end == "jupyterlab":  # the kernel inherits it, as from jupyter_server
            monkeypatch.setenv("JPY_SESSION_NAME", str(source))
        else:
            monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
        target = tmp_path / f"bar_{front_end}.ipynb"
        papermill.execute_notebook(
            str(source), str(target), kernel_name=DEFAULT_KERNEL, cwd=str(ROOT), progress_bar=False
        )
        texts[front_end] = target.read_text(encoding="utf-8")
    assert "widget bar: True" in texts["jupyterlab"]
    assert "application/vnd.jupyter.widget-view+json" in texts["jupyterlab"]  # a widget, not a text bar
    assert "widget bar: False" in texts["papermill"]
    assert "application/vnd.jupyter.widget-view+json" not in texts["papermill"]
    assert "cell loop: 3/3 (100%)" in texts["papermill"]  # a line the log shows


def _displayed_images(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum(
        1
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    )


def _pngs(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")} if folder.exists() else {}


@pytest.mark.slow
def test_every_figure_a_stage_saves_is_shown_in_its_notebook(tmp_path):
    """Each committed notebook, executed headless (papermill) on a tiny run, shows inline every
    figure its stage writes: a JupyterLab user reads the notebook, not the figures folder."""
    _kernel_or_skip()
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=140, n_valid=35, n_test=70, seed=0))
    out = tmp_path / "outputs"
    common = ["--dataset", "synthetic", "--data-root", str(root), "--outputs", str(out), "--run", "r", "--quick"]
    shared = ("-p", "epochs=1", "-p", "batch_size=32", "-p", "progress=False", "-p", f"cache_dir={tmp_path / 'cache'}")
    pipeline = ("-p", "detectors=['msp', 'tknn', 'cycle']", "-p", "embed_max_points=60")
    noisy = ("-p", "methods=['ce', 'rul']", "-p", "noise=[None]", "-p", "seeds=[0]", "-p", "attention_images=2")
    run_dir = out / "r"
    for stage in ("01", "02", "03", "04", "05"):
        before = _pngs(run_dir)
        params = [*shared, *(noisy if stage == "05" else pipeline)]
        assert main(["pipeline", "--stages", stage, *common, *params]) == 0, stage
        written = [p for p, t in _pngs(run_dir).items() if before.get(p) != t]
        notebook = next((run_dir / "notebooks").glob(f"{stage}_*.ipynb"))
        assert written, f"stage {stage} wrote no figure"
        assert _displayed_images(notebook) == len(written), (stage, sorted(p.name for p in written))
