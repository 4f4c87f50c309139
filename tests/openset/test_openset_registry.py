"""One registry for every detector: names, capability attributes, parameters, validation."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from ferlib import stages
from ferlib.openset import NetworkConfig, available_detectors, detector_class, detector_parameters, make_detector
from ferlib.openset.base import Detector
from ferlib.openset.registry import SHARED_SETTINGS, resolve_params, validate_detectors

ROOT = Path(__file__).resolve().parents[2]


def test_registry_covers_every_detector_including_the_trained_ones():
    assert set(available_detectors()) == {
        "msp",
        "small_loss",
        "max_logit",
        "energy",
        "entropy",
        "mahalanobis",
        "knn",
        "tknn",
        "cycle",
        "released",
        "contrast",
        "uncertainty",
        "disagreement",
        "proser",
        "sal_filter",
        "sal",
        "pseudo_oe",
        "erd",
        # pytorch-ood's, through the adapter (ferlib/openset/pood.py)
        "pood_msp",
        "pood_max_logit",
        "pood_energy",
        "pood_entropy",
        "gen",
        "kl_matching",
        "openmax",
        "pood_knn",
        "pood_mahalanobis",
        "rmd",
        "vim",
        "fdbd",
        "nnguide",
        "dice",
        "nci",
        "she",
        "react",
        "ash",
        "scale",
        "vra",
    }
    assert set(stages.DEFAULT_DETECTORS) <= set(available_detectors())
    for name in available_detectors():
        cls = detector_class(name)
        assert issubclass(cls, Detector) and cls.name == name
        if cls.trains_networks:
            assert cls.config_cls is not None and issubclass(cls.config_cls, NetworkConfig)
        if cls.config_cls is not None:
            quiet = {"progress": False} if "progress" in detector_parameters(name) else {}
            assert isinstance(make_detector(name, **quiet), cls)


def test_capabilities():
    assert detector_class("cycle").reads_pseudo_labels and detector_class("cycle").needs_images
    contrast = detector_class("contrast")
    assert contrast.needs_images and contrast.needs_train_images and contrast.trains_networks
    assert not contrast.depends_on_protocol()  # reads no label: one fit for every protocol
    assert all(detector_class(n).depends_on_protocol() for n in ("msp", "knn", "tknn", "cycle", "released"))
    # the extras readers need a specific stage 01 head: named, and kept out of the defaults
    assert dict(detector_class("uncertainty").reads_extras) == {"uncertainty": "uncertainty"}
    assert dict(detector_class("disagreement").reads_extras) == {"branch_logits": "branches"}
    for name in available_detectors():
        cls = detector_class(name)
        if cls.reads_extras:
            assert name not in stages.DEFAULT_DETECTORS and cls.depends_on_protocol(), name


def test_no_detect_module_and_no_import_circle():
    """detect.py is gone; the trained detectors import alone in a fresh interpreter (the
    old detect <-> cycle circle), and the registry imports no detector module."""
    assert not (ROOT / "ferlib" / "openset" / "detect.py").exists()
    for module in ("ferlib.openset.cycle", "ferlib.openset.contrast", "ferlib.openset.registry"):
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    source = (ROOT / "ferlib" / "openset" / "registry.py").read_text()
    assert "import ferlib.openset.cycle" not in source and "from ferlib.openset.cycle" not in source


def test_stage_03_names_no_detector_in_its_logic():
    """Stage 03 and the ablation act on class attributes: no ``if name == "cycle"``, and
    no per-detector dict parameters any more."""
    for fn in (stages.detect_open_set, stages.ablate_cycle):
        params = inspect.signature(fn).parameters
        assert "detector_params" in params and "cycle" not in params and "contrast" not in params
    body = inspect.getsource(stages.detect_open_set).split('"""')[-1]
    assert "cycle" not in body and "contrast" not in body


def test_shared_settings_reach_only_detectors_that_have_them():
    shared = {"input_size": 32, "stem": "imagenet", "seed": 3, "device": "cpu:0", "amp": True, "progress": False}
    assert set(shared) == set(SHARED_SETTINGS)
    cycle = resolve_params("cycle", {"lam": 0.0, "seed": 7}, shared)
    assert cycle["input_size"] == 32 and cycle["device"] == "cpu:0" and cycle["lam"] == 0.0
    assert cycle["seed"] == 7  # a detector's own parameter wins over the stage's
    assert resolve_params("tknn", {"k": 10}, shared) == {"k": 10, "chunk": 1024}
    assert resolve_params("msp", None, shared) == {}
    assert set(detector_parameters("contrast")) >= {"epochs", "lam", "folds", "batch_size"}


@pytest.mark.parametrize(
    "detectors, params, match",
    [
        (["msp", "odin"], None, r"unknown detector 'odin'; choose from \['msp'"),
        (["msp"], {"odin": {}}, r"unknown detector 'odin'"),
        (
            ["msp"],
            {"cycle": {"lamda": 0}},
            r"detector_params\['cycle'\]: unknown parameter 'lamda'; cycle accepts .*'lam'",
        ),
        (["msp"], {"tknn": {"K": 3}}, r"unknown parameter 'K'; tknn accepts \['chunk', 'k'\]"),
        (["msp"], {"msp": {"k": 3}}, r"msp accepts no parameters"),
        (["msp"], {"cycle": {"select_ratio": 2}}, r"detector_params\['cycle'\]: select_ratio"),
        (["msp"], {"cycle": {"out_dir": "x"}}, r"set by stage 03"),
        (["msp"], {"cycle": 3}, r"must be a dict"),
        ("msp", None, r"must be a list of detector names"),
        (["msp", "msp"], None, r"more than once"),
        ([], None, r"empty"),
    ],
)
def test_validate_detectors_names_the_problem_and_the_choices(detectors, params, match):
    with pytest.raises(ValueError, match=match):
        validate_detectors(detectors, params)


def test_validate_detectors_accepts_the_documented_shape():
    validate_detectors(
        list(stages.DEFAULT_DETECTORS), {"tknn": {"k": 10}, "cycle": {"lam": 0, "cycles": 2}, "contrast": {"epochs": 4}}
    )


def test_stage_03_refuses_bad_names_before_any_work(tmp_path):
    """No stage 02 files exist: the bad name must be reported, not the missing files."""
    with pytest.raises(ValueError, match="unknown parameter 'lamda'"):
        stages.detect_open_set(
            run_dir=str(tmp_path / "run"), detectors=["msp", "cycle"], detector_params={"cycle": {"lamda": 0}}
        )
    with pytest.raises(ValueError, match="unknown detector 'odin'"):
        stages.detect_open_set(run_dir=str(tmp_path / "run"), detectors=["odin"])
    with pytest.raises(ValueError, match="ablation variant 'typo'"):
        stages.ablate_cycle(run_dir=str(tmp_path / "run"), variants={"typo": {"lamda": 0}})
    assert not (tmp_path / "run").exists()
