"""The one canonical emotion enum.

Every data set maps its labels on disk onto :class:`Emotion` through an explicit table
(never through folder order: ``ImageFolder`` sorts names alphabetically, a known source of
silent label bugs). Models see contiguous targets through :class:`ferlib.data.splits.LabelMap`.
"""

from __future__ import annotations

from enum import IntEnum


class Emotion(IntEnum):
    """Canonical emotions. Values follow FERPlus' vote order for the first eight."""

    NEUTRAL = 0
    HAPPINESS = 1
    SURPRISE = 2
    SADNESS = 3
    ANGER = 4
    DISGUST = 5
    FEAR = 6
    CONTEMPT = 7

    @property
    def label(self) -> str:
        """Lower-case display name, e.g. ``"surprise"``."""
        return self.name.lower()

    @property
    def short(self) -> str:
        """Three-letter name as used in the paper's tables (``Sur``, ``Fea``...)."""
        return self.name[:3].capitalize()


#: The seven basic expressions used by open-set FER (contempt excluded).
BASIC7: tuple[Emotion, ...] = tuple(e for e in Emotion if e is not Emotion.CONTEMPT)

_ALIASES: dict[str, Emotion] = {
    "neutral": Emotion.NEUTRAL,
    "neu": Emotion.NEUTRAL,
    "happiness": Emotion.HAPPINESS,
    "happy": Emotion.HAPPINESS,
    "hap": Emotion.HAPPINESS,
    "joy": Emotion.HAPPINESS,
    "surprise": Emotion.SURPRISE,
    "surprised": Emotion.SURPRISE,
    "sur": Emotion.SURPRISE,
    "sadness": Emotion.SADNESS,
    "sad": Emotion.SADNESS,
    "anger": Emotion.ANGER,
    "angry": Emotion.ANGER,
    "ang": Emotion.ANGER,
    "disgust": Emotion.DISGUST,
    "disgusted": Emotion.DISGUST,
    "dis": Emotion.DISGUST,
    "fear": Emotion.FEAR,
    "fearful": Emotion.FEAR,
    "fea": Emotion.FEAR,
    "contempt": Emotion.CONTEMPT,
    "con": Emotion.CONTEMPT,
}


def parse_emotion(value: str | int | Emotion) -> Emotion:
    """Turn a name (any case, common aliases) or canonical integer into an :class:`Emotion`.

    Raises ``ValueError`` listing the accepted names, so a typo in a notebook's
    parameters cell fails at once with a readable message.
    """
    if isinstance(value, Emotion):
        return value
    if isinstance(value, int):
        try:
            return Emotion(value)
        except ValueError:
            raise ValueError(f"{value} is not a canonical emotion value (0..7)") from None
    key = str(value).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    names = ", ".join(e.label for e in Emotion)
    raise ValueError(f"unknown emotion {value!r}; expected one of: {names}")
