"""The parameter contract of the stage functions and its up-front validation (ferlib.params).

Every stage function keeps the contract (no ``**kwargs`` catch-all, every parameter typed,
defaulted and documented), and a misspelt name or an out-of-range value fails when the
function is called, before any file is read or written, naming the parameter, the value and
the choices. No test here trains or reads a data set.
"""

from __future__ import annotations

import inspect

import pytest

from ferlib import noisy, report, stages
from ferlib.params import (
    ParamDoc,
    ParameterError,
    applied_arguments,
    checked,
    contract_problems,
    parameter_docs,
    validate_arguments,
)
from ferlib.run import STAGES

STAGE_FUNCTIONS = [stage.function() for stage in STAGES] + [stages.ablate_cycle]


@pytest.mark.parametrize("func", STAGE_FUNCTIONS, ids=lambda f: f.__name__)
def test_every_stage_function_keeps_the_contract(func):
    """The old stage functions swallowed any key in ``**_`` and documented none."""
    assert contract_problems(func) == []


def test_pipeline_table_is_the_stage_functions():
    """Stages 01-04 form the pipeline; stage 05, the noisy-label benchmark, is standalone
    (it runs only when named)."""
    assert [s.function() for s in STAGES] == [
        stages.train_close_set,
        stages.predict_pseudo_labels,
        stages.detect_open_set,
        report.visualise,
        noisy.noisy_label_benchmark,
    ]
    assert [s.standalone for s in STAGES] == [False, False, False, False, True]


def test_stage_03_default_detectors_are_one_list_of_registered_ones():
    """Notebook 03 ran 7 detectors by default while the function ran 9: the signature's
    default is DEFAULT_DETECTORS. Detectors that read a specific head's extras
    (``reads_extras``) run only when named: most runs lack that head."""
    from ferlib.openset.registry import available_detectors, detector_class

    default = inspect.signature(stages.detect_open_set).parameters["detectors"].default
    assert list(default) == list(stages.DEFAULT_DETECTORS)
    assert set(default) <= set(available_detectors())
    assert not [n for n in default if detector_class(n).reads_extras]
    assert {"msp", "cycle", "contrast"} <= set(default)


def _documented(a: int = 1, b: str | None = None, c: tuple = (1, 2)) -> None:
    """Something.

    More prose that is not a section.

    Parameters
    ----------
    a : int
        The first; its description
        runs over two lines.

        A second paragraph stays out of the help line.
    b, c
        Documented together.

    Returns
    -------
    None
        not a parameter
    """


def test_parameter_docs_reads_the_numpy_section():
    docs = parameter_docs(_documented)
    assert set(docs) == {"a", "b", "c"}
    assert docs["a"] == ParamDoc(
        "a", "int", "The first; its description\nruns over two lines.\n\nA second paragraph stays out of the help line."
    )
    assert docs["a"].help == "The first; its description runs over two lines."
    assert docs["c"].help == "Documented together." and docs["c"].type == ""
    assert contract_problems(_documented) == []


def test_contract_problems_name_each_breach():
    def loose(a, b: int = 0, **_: object):
        """Parameters
        ----------
        b : int
            Documented.
        ghost : int
            Not a parameter.
        """

    problems = contract_problems(loose)
    assert "has a *args/**kwargs catch-all (misspelt keys would be swallowed)" in problems
    assert "parameter a has no type annotation" in problems and "parameter a has no default" in problems
    assert "parameter a is not documented under 'Parameters' in the docstring" in problems
    assert "the docstring documents ghost, which is not a parameter" in problems
    assert not any("parameter b" in p for p in problems)


def test_applied_arguments_fill_defaults_and_drop_foreign_keys():
    assert applied_arguments(_documented, {"a": 5, "zzz": 1}) == {"a": 5, "b": None, "c": (1, 2)}


def _train(**changes):
    func = stages.train_close_set
    validate_arguments(func, applied_arguments(func, changes))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"epochs": 0}, ["train_close_set: epochs=0", "integer >= 1"]),
        ({"epochs": 2.5}, ["epochs=2.5", "expected int, got float"]),
        ({"batch_size": 1}, ["batch_size=1", ">= 2"]),
        ({"lr": 0}, ["lr=0", "(0.0, 1.0]"]),
        ({"lr": 2.0}, ["lr=2.0"]),
        ({"lr": "1e-3"}, ["lr='1e-3'", "expected float | None, got str"]),
        ({"weight_decay": -1e-4}, ["weight_decay=-0.0001", "[0.0, inf)"]),
        ({"val_fraction": 1.0}, ["val_fraction=1.0", "(0.0, 1.0)"]),
        ({"input_size": 16}, ["input_size=16", "in 32..256"]),
        ({"lr_gamma": 1.5}, ["lr_gamma=1.5"]),
        ({"seed": -1}, ["seed=-1"]),
        ({"dataset": "ferplsu"}, ["dataset='ferplsu'", "unknown data set", "ferplus", "rafdb"]),
        ({"open_class": "bored"}, ["open_class='bored'", "unknown emotion", "surprise"]),
        ({"arch": "resnet19"}, ["arch='resnet19'", "resnet18, resnet50"]),
        ({"stem": "big"}, ["stem='big'", "auto, small, imagenet"]),
        ({"device": "gpu"}, ["device='gpu'", "not a torch device"]),
        ({"pretrained": "no/such/weights.pth"}, ["pretrained='no/such/weights.pth'", "no such file"]),
        ({"objective": "cee"}, ["objective", "'cee'", "ce"]),
        ({"objective_params": {"zzz": 1}}, ["zzz"]),
        ({"head": "cam"}, ["head", "'cam'", "linear"]),
        ({"head_params": {"zzz": 1}}, ["zzz"]),
        ({"class_map": {"0": "happyy"}}, ["class_map", "happyy"]),
        ({"data_options": {"fold": 3}}, ["fold"]),
    ],
)
def test_bad_values_name_the_parameter_the_value_and_the_choices(changes, words):
    with pytest.raises(ParameterError) as info:
        _train(**changes)
    for word in words:
        assert word in str(info.value)


def test_good_values_pass():
    _train()
    _train(
        epochs=1,
        batch_size=2,
        lr=1,
        weight_decay=0,
        val_fraction=0.5,
        input_size=32,
        open_class=None,
        device="cuda:1",
        objective="ce",
        head="linear",
        dataset="ferplus",
    )
    _train(lr=1)  # an int where a float is due is fine


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"detectors": ["msp", "odin"]}, ["detect_open_set", "unknown detector 'odin'", "tknn"]),
        ({"detectors": "msp"}, ["detectors"]),
        ({"detector_params": {"tknn": {"kk": 3}}}, ["tknn", "'kk'", "k"]),
        (
            {"protocols": ["honest", "honset"]},
            ["protocols=['honest', 'honset']", "unknown protocol 'honset'", "honest, reference"],
        ),
        ({"protocols": []}, ["protocols=[]", "at least one"]),
        ({"eval_subset": "tset"}, ["eval_subset='tset'", "all, test"]),
    ],
)
def test_stage_03_names_are_checked(changes, words):
    func = stages.detect_open_set
    with pytest.raises(ParameterError) as info:
        validate_arguments(func, applied_arguments(func, changes))
    for word in words:
        assert word in str(info.value)


def test_one_bare_protocol_name_is_a_list_of_one():
    func = stages.detect_open_set
    validate_arguments(func, applied_arguments(func, {"protocols": "honest", "detectors": ["msp"]}))


def test_unknown_keys_are_refused():
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) epohcs; it accepts dataset, data_root"):
        validate_arguments(stages.train_close_set, {"epohcs": 3})


def test_stage_functions_check_their_arguments_before_any_work(tmp_path):
    """Called directly (as a notebook does), a stage refuses a typo or a bad value at once:
    nothing is read, trained or written."""
    run = tmp_path / "run"
    with pytest.raises(ParameterError, match=r"train_close_set: .*'epohcs'.*it accepts dataset, data_root"):
        stages.train_close_set(run_dir=str(run), epohcs=3)
    with pytest.raises(ParameterError, match="batch_size=1"):
        stages.train_close_set(run_dir=str(run), batch_size=1)
    with pytest.raises(ParameterError, match="unknown protocol 'honset'"):
        stages.detect_open_set(run_dir=str(run), protocols=["honset"], detectors=["msp"])
    with pytest.raises(ParameterError, match="embed_method='pca'"):
        report.visualise(run_dir=str(run), embed_method="pca")
    with pytest.raises(ParameterError, match="predict_pseudo_labels: .*'arhc'"):
        stages.predict_pseudo_labels(run_dir=str(run), arhc="resnet18")
    assert not run.exists()


def test_checked_keeps_the_signature_and_the_docstring():
    @checked
    def stage(n: int = 1) -> int:
        """Doubles.

        Parameters
        ----------
        n : int
            How many.
        """
        return 2 * n

    assert list(inspect.signature(stage).parameters) == ["n"]
    assert parameter_docs(stage)["n"].help == "How many."
    assert stage(3) == 6 and stage(n=4) == 8
    with pytest.raises(ParameterError, match="stage: n='x': expected int"):
        stage("x")


def test_inherited_parameter_docs_fill_only_what_the_stage_leaves_out():
    from ferlib.params import inherit_parameter_docs

    def source(a: int = 1, b: int = 2) -> None:
        """Source.

        Parameters
        ----------
        a : int
            The source's a.
        b : int
            The source's b.
        """

    @inherit_parameter_docs(source)
    def stage(a: int = 1, b: int = 2, c: int = 3) -> None:
        """Stage.

        Parameters
        ----------
        b : int
            The stage's own b.
        c : int
            Only here.
        """

    docs = parameter_docs(stage)
    assert docs["a"].help == "The source's a."  # inherited
    assert docs["b"].help == "The stage's own b."  # its own entry wins
    assert docs["c"].help == "Only here." and set(docs) == {"a", "b", "c"}


def test_stages_01_and_02_describe_their_shared_parameters_once():
    """Stage 02 writes no entry of its own for a data parameter it shares with stage 01: it
    inherits stage 01's, so the two notebooks' help lines cannot drift apart."""
    from ferlib import stages

    first, second = parameter_docs(stages.train_close_set), parameter_docs(stages.predict_pseudo_labels)
    for name in ("dataset", "data_root", "class_map", "data_options", "cache_dir", "cache_memmap", "seed"):
        assert second[name] == first[name], name
