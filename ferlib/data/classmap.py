"""Class maps: a data set's own label names -> canonical emotions (or dropped).

A class map lets a user run a data set whose labels are not spelt as emotions (folders
``0_neutral``, ``happy face``), or that holds a class the experiment does not use, without
moving files. Its keys are the data set's *own* label names, so each loader says what they
are:

==============================  ==========================================================
loader                          keys
==============================  ==========================================================
``folders``, ``synthetic``,     class folder names
``subjects``
``affectnet``                   folder ids ``"0"`` .. ``"10"``
``ferplus``                     vote columns ``neutral`` .. ``contempt``, ``unknown``, ``NF``
``rafdb``                       label ids ``"1"`` .. ``"7"``
==============================  ==========================================================

Values: an emotion (any spelling :func:`~ferlib.emotions.parse_emotion` accepts, or a
canonical integer), or ``None`` / ``"drop"`` to leave those samples out on purpose. Labels
the map does not name keep the loader's default meaning. Written as plain strings so that
``-p "class_map={'0_neutral': 'neutral', 'contempt': 'drop'}"`` works from the command line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from ferlib.emotions import Emotion, parse_emotion

from .errors import DataError

#: What a class map may map a label to.
ClassTarget = Emotion | str | int | None

#: Spellings of "leave these samples out" (compared lower-case).
DROP_VALUES: frozenset[str] = frozenset({"drop", "none", "null", "skip", ""})


def parse_target(value: ClassTarget) -> Emotion | None:
    """One class-map value -> its emotion, or ``None`` for "drop". ``ValueError`` if neither."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in DROP_VALUES:
        return None
    return parse_emotion(value)


def resolve_class_map(
    class_map: Mapping[str, ClassTarget] | None,
    where: str | Path,
    known: Collection[str] | None = None,
) -> dict[str, Emotion | None]:
    """Validate ``class_map`` and parse its values; ``{}`` for ``None``.

    ``known``: the data set's label names (``None`` for folder layouts, whose keys are
    whatever folders exist). A key outside ``known`` or an unparsable value raises
    :class:`DataError` at ``where`` naming the key, before any image is touched.
    """
    if class_map is None:
        return {}
    if not isinstance(class_map, Mapping):
        raise DataError(
            where,
            f"class_map must be a dict (label -> emotion or 'drop'), got {type(class_map).__name__}: {class_map!r}",
        )
    resolved: dict[str, Emotion | None] = {}
    for key, value in class_map.items():
        key = str(key)
        if known is not None and key not in known:
            raise DataError(
                where, f"class_map key {key!r} is not a label of this data set; its labels are: {', '.join(known)}"
            )
        try:
            resolved[key] = parse_target(value)
        except ValueError as exc:
            raise DataError(where, f"class_map[{key!r}]: {exc}; or 'drop' to leave it out") from None
    return resolved


def class_map_key(class_map: Mapping[str, ClassTarget] | None) -> str:
    """A canonical string of a class map (sorted, parsed values) for fingerprints."""
    if not class_map:
        return "class_map:none"
    items = []
    for key, value in sorted(class_map.items(), key=lambda kv: str(kv[0])):
        try:
            target = parse_target(value)
            shown = "drop" if target is None else target.label
        except ValueError:
            shown = repr(value)
        items.append(f"{key}={shown}")
    return "class_map:" + ",".join(items)
