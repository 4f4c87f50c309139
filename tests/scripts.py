"""Import a repository script (tools/, benchmarks/) as a module, for the tests of that script.

The scripts are not a package; each test file used to carry its own importlib loader. The
module is registered in ``sys.modules`` under its file name because dataclasses defined in a
script look their module up there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """``load_script("tools/sensitivity.py")``: the script, executed fresh as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
