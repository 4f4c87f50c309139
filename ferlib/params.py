"""The parameter contract of the stage functions, and its up-front validation.

A stage function's signature is the one list of its parameters: the notebooks' parameters
cells and stage calls are generated from it (``tools/make_notebooks.py``), the runner passes
each stage only the keys it accepts (``ferlib.run``), and this module checks the values.
Every parameter is an explicit, typed, defaulted keyword argument documented under a
numpy-style ``Parameters`` section; the first line of its description is the help line the
notebook shows above the assignment.

Validation runs twice with the same code: the runner calls :func:`validate_arguments` for every
selected stage before the first one starts, and :func:`checked` (a decorator on each stage
function) calls it again when a notebook or a user calls the function directly. Either way a
misspelt data set, detector, protocol, objective or head name, or an out-of-range setting
(``epochs=0``, ``lr=10``), fails in a second, naming the parameter, the bad value and the
choices, instead of after an hour of training.

A leaf module: it imports no stage module (``ferlib.stages``, ``ferlib.report``, ``ferlib.noisy``)
and no torch when loaded; the checks that need a registry import it when they run. The stage
modules import this one, and ``ferlib.run`` reads a stage's contract without loading them all.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

#: Parameters that say where or how visibly a stage runs, not what it computes: they are left
#: out of every result key (train on a GPU box, then render the notebooks on a laptop).
UNHASHED_PARAMS = frozenset({"run_dir", "device", "progress", "cache_memmap", "records_dir"})

F = TypeVar("F", bound=Callable[..., Any])


class ParameterError(ValueError):
    """A stage parameter is unknown, of the wrong type or out of range; the message says which."""


# --------------------------------------------------------------------------------------------
# the signature and the docstring


def signature_parameters(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The named parameters of ``func`` (``*args`` / ``**kwargs`` left out), in order."""
    sig = inspect.signature(func)
    return {
        name: p
        for name, p in sig.parameters.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def accepts_any_keyword(func: Callable[..., Any]) -> bool:
    """Whether ``func`` has a ``**kwargs`` catch-all (stage functions must not: it hides typos)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(func).parameters.values())


def accepted(func: Callable[..., Any], key: str) -> bool:
    """Whether calling ``func(key=...)`` is legal."""
    return key in signature_parameters(func) or accepts_any_keyword(func)


def applied_arguments(func: Callable[..., Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The values ``func`` runs with when called with the keys of ``given`` it accepts.

    Every named parameter appears, with its default where ``given`` has no value; keys that
    ``func`` does not accept are dropped (a ``**kwargs`` function keeps them all). This is what
    a stage record and the manifest store as *applied*.
    """
    out: dict[str, Any] = {}
    for name, p in signature_parameters(func).items():
        if name in given:
            out[name] = given[name]
        elif p.default is not inspect.Parameter.empty:
            out[name] = p.default
    if accepts_any_keyword(func):
        out.update({k: v for k, v in given.items() if k not in out})
    return out


@dataclass(frozen=True)
class ParamDoc:
    """One entry of a numpy-style ``Parameters`` section."""

    name: str
    type: str
    description: str

    @property
    def help(self) -> str:
        """The description's first paragraph on one line: the notebook's comment above the
        assignment (further paragraphs stay in the docstring)."""
        return " ".join(self.description.split("\n\n", 1)[0].split())


_SECTION_RULE = re.compile(r"^\s*-{3,}\s*$")
_ENTRY = re.compile(r"^(?P<names>\*{0,2}\w+(?:\s*,\s*\w+)*)\s*(?::\s*(?P<type>.*?))?\s*$")


def parameter_docs(func: Callable[..., Any]) -> dict[str, ParamDoc]:
    """The ``Parameters`` section of ``func``'s docstring, by parameter name.

    The format is numpy's: a ``Parameters`` line, a rule of dashes, then for each parameter a
    ``name : type`` line followed by its indented description (``a, b : type`` or ``a, b``
    alone documents several at once). The section ends at the next titled section (a line
    followed by dashes) or at the end of the docstring.
    """
    doc = inspect.getdoc(inspect.unwrap(func)) or ""
    lines = doc.splitlines()
    start = None
    for i in range(len(lines) - 1):
        if lines[i].strip() == "Parameters" and _SECTION_RULE.match(lines[i + 1]):
            start = i + 2
            break
    if start is None:
        return {}
    out: dict[str, ParamDoc] = {}
    names: list[str] = []
    kind = ""
    description: list[str] = []

    def flush() -> None:
        for name in names:
            out[name] = ParamDoc(name, kind, "\n".join(description).strip())

    for i in range(start, len(lines)):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and _SECTION_RULE.match(lines[i + 1]) and not line.startswith(" "):
            break  # the next section (Returns, Notes, ...)
        if line and not line[0].isspace():
            match = _ENTRY.match(line)
            if match is None:
                break  # prose after the section
            flush()
            names = [n.strip().lstrip("*") for n in match["names"].split(",")]
            kind, description = match["type"] or "", []
        elif names:
            description.append(line.strip())
    flush()
    return out


def inherit_parameter_docs(source: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator: the parameters a stage shares with ``source`` (same name, not documented
    in the stage's own ``Parameters`` section) take ``source``'s entry.

    Why. Stages 01 and 02 load the same data with the same dozen parameters; writing those
    entries twice let them drift (stage 02's ``arch`` help once lacked a backbone stage 01
    had). An entry the stage writes itself wins, so a stage-specific meaning stays possible.
    The entries are appended to the ``Parameters`` section, which must be the docstring's
    last section.
    """

    def decorate(func: F) -> F:
        own = parameter_docs(func)
        theirs = parameter_docs(source)
        missing = [name for name in signature_parameters(func) if name not in own and name in theirs]
        if not missing:
            return func
        doc = inspect.cleandoc(func.__doc__ or "")
        if not re.search(r"^Parameters\n-{3,}$", doc, re.M):
            doc += "\n\nParameters\n----------"
        lines = [doc.rstrip()]
        for name in missing:
            entry = theirs[name]
            lines.append(f"{name} : {entry.type}" if entry.type else name)
            lines.extend(f"    {line}" if line else "" for line in entry.description.splitlines())
        func.__doc__ = "\n".join(lines) + "\n"
        return func

    return decorate


def contract_problems(func: Callable[..., Any]) -> list[str]:
    """What keeps ``func`` from being a stage function: a ``**kwargs`` catch-all, a parameter
    without a type annotation or a default, or one missing from the docstring's Parameters
    section. Empty when ``func`` keeps the contract (the tests assert that for every stage)."""
    problems = []
    if accepts_any_keyword(func) or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in inspect.signature(func).parameters.values()
    ):
        problems.append("has a *args/**kwargs catch-all (misspelt keys would be swallowed)")
    docs = parameter_docs(func)
    for name, p in signature_parameters(func).items():
        if p.annotation is inspect.Parameter.empty:
            problems.append(f"parameter {name} has no type annotation")
        if p.default is inspect.Parameter.empty:
            problems.append(f"parameter {name} has no default")
        if name not in docs or not docs[name].help:
            problems.append(f"parameter {name} is not documented under 'Parameters' in the docstring")
    for name in docs:
        if name not in signature_parameters(func):
            problems.append(f"the docstring documents {name}, which is not a parameter")
    return problems


# --------------------------------------------------------------------------------------------
# type checks from the annotations


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Evaluated annotations of ``func``; empty when they cannot be evaluated (then only the
    checks by name below apply)."""
    try:
        return typing.get_type_hints(inspect.unwrap(func))
    except Exception:  # noqa: BLE001 - an unresolvable forward reference only disables type checks
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits ``hint``; lenient where a check would need the element values
    (those are checked by name), strict on the outer type (a str where an int is due)."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    target = origin or hint
    if target is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if target is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if target in (collections.abc.Sequence, collections.abc.Iterable):
        return isinstance(value, (list, tuple, str))  # a bare name is checked (or refused) by name
    if target in (list, tuple, set, frozenset):
        return isinstance(value, (list, tuple, set, frozenset))  # notebooks and -p give lists
    if target in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    if target is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    if isinstance(target, type):
        return isinstance(value, target)
    return True  # a hint we cannot check


def _type_name(hint: Any) -> str:
    text = str(hint) if not isinstance(hint, type) else hint.__name__
    return text.replace("typing.", "")


# --------------------------------------------------------------------------------------------
# checks by parameter name: a name means the same thing in every stage


def _fail(name: str, value: Any, problem: str) -> typing.NoReturn:
    raise ParameterError(f"{name}={value!r}: {problem}")


def _choices(name: str, value: Any, choices: Iterable[str], what: str) -> None:
    choices = list(choices)
    if value not in choices:
        _fail(name, value, f"unknown {what}; choose from {', '.join(map(str, choices))}")


def _int_range(low: int | None = None, high: int | None = None) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(name, value, "must be an integer")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"in {low}..{high}"
                if low is not None and high is not None
                else (f">= {low}" if low is not None else f"<= {high}")
            )
            _fail(name, value, f"must be an integer {bounds}")

    return check


def _real(low: float, high: float | None, *, low_open: bool, high_open: bool) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(name, value, "must be a finite number")
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open else "["
            right = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
            _fail(name, value, f"must lie in {left}{low}, {right}")

    return check


def _names(name: str, value: Any) -> list[str]:
    """A non-empty list of names (one bare name counts as a list of one, as the stages read it)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(v, str) for v in names):
        _fail(name, value, "must be a list of names")
    if not names:
        _fail(name, value, "must name at least one")
    return list(names)


def _check_dataset(name: str, value: Any) -> None:
    from ferlib.data import available_datasets

    _choices(name, value, available_datasets(), "data set")


def _check_open_class(name: str, value: Any) -> None:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return
    from ferlib.emotions import Emotion, parse_emotion

    try:
        parse_emotion(value)
    except (ValueError, KeyError):
        _fail(name, value, "unknown emotion; choose from " + ", ".join(e.label for e in Emotion) + " or None")


def _check_protocols(name: str, value: Any) -> None:
    from ferlib.openset.data import PROTOCOLS

    for protocol in _names(name, value):
        if protocol not in PROTOCOLS:
            _fail(name, value, f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def _check_arch(name: str, value: Any) -> None:
    from ferlib.models import TRUNKS

    _choices(name, value, sorted(TRUNKS), "architecture")


def _check_embed_method(name: str, value: Any) -> None:
    from ferlib.report import EMBED_METHODS

    _choices(name, str(value).lower(), EMBED_METHODS, "embedding method")


def _check_eval_subset(name: str, value: Any) -> None:
    from ferlib.stages import EVAL_SUBSETS

    _choices(name, value, EVAL_SUBSETS, "evaluation subset")


def _check_device(name: str, value: Any) -> None:
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        _fail(name, value, "not a torch device; use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'")


def _check_pretrained(name: str, value: Any) -> None:
    from ferlib.models.face_weights import PACKAGED_WEIGHTS, packaged_dlib_face_file

    if value in PACKAGED_WEIGHTS:  # weights an installed package ships: is it installed?
        try:
            packaged_dlib_face_file()
        except FileNotFoundError as exc:
            _fail(name, value, str(exc))
    elif value is not None and not os.path.isfile(value):
        _fail(
            name, value, f"no such file (relative paths start at {os.getcwd()}), nor one of {sorted(PACKAGED_WEIGHTS)}"
        )


def _check_optional_count(name: str, value: Any) -> None:
    if value is not None:
        _int_range(0)(name, value)


def _optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    """``check``, with None accepted (e.g. ``lr=None``: the recipe's value)."""

    def optional(name: str, value: Any) -> None:
        if value is not None:
            check(name, value)

    return optional


#: name -> check(name, value); a check raises ParameterError. Applied to every stage that
#: has a parameter of that name, so a name has one meaning across the kit.
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "dataset": _check_dataset,
    "open_class": _check_open_class,
    "seed": _int_range(0),
    "device": _check_device,
    "arch": _check_arch,
    "stem": lambda n, v: _choices(n, v, ("auto", "small", "imagenet"), "stem"),
    "input_size": _int_range(32, 256),
    "epochs": _int_range(1),
    "batch_size": _int_range(2),
    "lr": _optional(_real(0.0, 1.0, low_open=True, high_open=False)),
    "weight_decay": _optional(_real(0.0, None, low_open=False, high_open=True)),
    "lr_gamma": _optional(_real(0.0, 1.0, low_open=True, high_open=False)),
    "val_fraction": _real(0.0, 1.0, low_open=True, high_open=True),
    "pretrained": _check_pretrained,
    "protocols": _check_protocols,
    "eval_subset": _check_eval_subset,
    "embed_method": _check_embed_method,
    "embed_max_points": _check_optional_count,
}


def _check_detectors(arguments: Mapping[str, Any]) -> None:
    from ferlib.openset.presets import preset_params
    from ferlib.openset.registry import validate_detectors

    params = preset_params(arguments.get("detector_preset"), arguments.get("detector_params"))
    validate_detectors(arguments["detectors"], params)


def _check_data(arguments: Mapping[str, Any]) -> None:
    """The loader's options and the class map's values (its keys need the data on disk)."""
    from ferlib.data.classmap import resolve_class_map
    from ferlib.data.prepare import dataset_options

    where = arguments.get("data_root") or f"data set {arguments['dataset']!r}"
    resolve_class_map(arguments.get("class_map"), where)
    dataset_options(
        arguments["dataset"], where, class_map=arguments.get("class_map"), data_options=arguments.get("data_options")
    )


def _check_objective(arguments: Mapping[str, Any]) -> None:
    from ferlib.losses import validate_objective

    validate_objective(arguments["objective"], arguments.get("objective_params") or {})


def _check_recipe(arguments: Mapping[str, Any]) -> None:
    from ferlib.stages import _recipe

    explicit = {k: arguments.get(k) for k in ("lr", "weight_decay", "lr_gamma")}
    _recipe(arguments["recipe"], arguments.get("recipe_params"), **explicit)


def _check_cache_memmap(arguments: Mapping[str, Any]) -> None:
    if arguments["cache_memmap"] and not arguments.get("cache_dir"):
        raise ParameterError("cache_memmap=True needs a cache_dir (the folder of the memory-mapped cache files)")


def _check_model(arguments: Mapping[str, Any]) -> None:
    """The architecture against its input size and weights (the dlib face trunks need at least
    103 px, and the packaged face weights fit only them), before any data is decoded."""
    from ferlib.models.dlibface import DlibFaceL1Trunk, DlibFaceTrunk
    from ferlib.models.face_weights import PACKAGED_WEIGHTS

    arch, size, weights = arguments["arch"], arguments.get("input_size"), arguments.get("pretrained")
    smallest = {"dlibface": DlibFaceTrunk, "dlibface_l1": DlibFaceL1Trunk}.get(arch)
    if smallest is not None and isinstance(size, int):
        need = smallest.MIN_SIZE[smallest.NUM_LEVELS]
        if size < need:
            raise ParameterError(
                f"input_size={size!r}: arch {arch!r} needs at least {need} px (dlib's network; 112 recommended)"
            )
    if weights in PACKAGED_WEIGHTS and arch not in PACKAGED_WEIGHTS[weights]:
        raise ParameterError(
            f"pretrained={weights!r} fits arch {' or '.join(PACKAGED_WEIGHTS[weights])}, not arch={arch!r}"
        )


def _check_head(arguments: Mapping[str, Any]) -> None:
    from ferlib.models import validate_head

    validate_head(arguments["head"], arguments.get("head_params") or {})


def _check_noisy_benchmark(arguments: Mapping[str, Any]) -> None:
    """Stage 05's methods, noise settings, seeds and what each run passes to stage 01."""
    from ferlib.noisy import plan_benchmark

    plan_benchmark(arguments)


#: (the parameter that triggers it, check over all arguments): names checked against the
#: registries that own them, together with their per-name parameters.
JOINT_CHECKS: tuple[tuple[str, Callable[[Mapping[str, Any]], None]], ...] = (
    ("data_options", _check_data),
    ("detectors", _check_detectors),
    ("objective", _check_objective),
    ("head", _check_head),
    ("arch", _check_model),
    ("cache_memmap", _check_cache_memmap),
    ("recipe", _check_recipe),
    ("methods", _check_noisy_benchmark),
)


def validate_arguments(func: Callable[..., Any], arguments: Mapping[str, Any], *, where: str | None = None) -> None:
    """Check the values ``func`` is about to run with; raise :class:`ParameterError` naming
    ``where`` (default: the function's name), the parameter, the bad value and the choices.

    ``arguments`` are the applied values (see :func:`applied_arguments`): unknown keys are an
    error here too, so a direct call and a runner call are held to the same contract.
    """
    where = where or getattr(func, "__qualname__", str(func))
    known = signature_parameters(func)
    if not accepts_any_keyword(func):
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise ParameterError(f"{where}: unknown parameter(s) {', '.join(unknown)}; it accepts {', '.join(known)}")
    hints = _type_hints(func)
    try:
        for name, value in arguments.items():
            hint = hints.get(name)
            if hint is not None and not _matches(value, hint):
                _fail(name, value, f"expected {_type_name(hint)}, got {type(value).__name__}")
            if name in CHECKS:
                CHECKS[name](name, value)
        for trigger, check in JOINT_CHECKS:
            if trigger in arguments:
                check(arguments)
    except ParameterError as exc:
        raise ParameterError(f"{where}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:  # a registry's own error: keep its words
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ParameterError(f"{where}: {message}") from None


def checked(func: F) -> F:
    """Decorator for stage functions: validate the arguments of every call before any work.

    ``inspect.signature`` and the docstring still describe ``func`` (``functools.wraps``), so
    the notebooks and the runner see the undecorated contract.
    """
    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:  # e.g. a misspelt keyword: name the function and its parameters
            raise ParameterError(
                f"{func.__qualname__}: {exc}; it accepts {', '.join(signature_parameters(func))}"
            ) from None
        bound.apply_defaults()
        validate_arguments(func, bound.arguments)
        return func(*bound.args, **bound.kwargs)

    return typing.cast(F, wrapper)
