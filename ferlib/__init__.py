"""ferlib: the logic behind ferkit's notebooks.

Facial expression recognition research kit: open-set FER (Zhang et al., AAAI 2024),
Relative Uncertainty Learning and diversified feature representations. Notebooks are thin
views; everything they call lives here and is unit-tested.
"""

__version__ = "0.1.0"
