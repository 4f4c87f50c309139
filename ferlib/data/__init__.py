"""Data layer: loaders onto canonical labels, image cache, batch augmentation, open-set splits.

One road: ``load_dataset(name, root, split)`` -> :class:`FERDataset` (paths + canonical
:class:`~ferlib.emotions.Emotion` labels) -> :func:`build_cache` (uint8 tensor, decoded
once) -> :func:`to_float` + :func:`augment_batch` per batch in the training loop.
:func:`openset_split` and :func:`carve_validation` work on label arrays of either.
:func:`~ferlib.data.prepare.load_splits` runs that road for the pipeline's stages.

Modules: ``base`` (FERDataset, loader registry), ``decode`` (image files -> 8-bit values),
``classmap`` (label names -> emotions), one module per layout (``ferplus``, ``rafdb``,
``affectnet``, ``folders``, ``subjects``, ``synthetic``), ``cache``, ``augment``,
``splits`` (open-set protocol, validation carve), ``duplicates`` (exact and near duplicate
images across splits; dropping them from the evaluation rows), ``prepare`` (the stages' data
step).
"""

from __future__ import annotations

from .affectnet import load_affectnet
from .augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, augment_batch, hflip, to_float
from .base import FERDataset, available_datasets, check_options, load_dataset, loader_options, register_loader
from .cache import ImageCache, UnreadableImageWarning, build_cache
from .decode import IMAGE_EXTENSIONS, decode_image, decode_rgb
from .errors import DataError, MissingSplitError
from .ferplus import load_ferplus
from .folders import load_folders
from .rafdb import load_rafdb
from .splits import LabelMap, OpenSetSplit, carve_validation, openset_split
from .subjects import load_subjects

__all__ = [
    "DataError",
    "MissingSplitError",
    "IMAGE_EXTENSIONS",
    "decode_image",
    "decode_rgb",
    "check_options",
    "loader_options",
    "load_subjects",
    "FERDataset",
    "load_dataset",
    "available_datasets",
    "register_loader",
    "load_ferplus",
    "load_rafdb",
    "load_affectnet",
    "load_folders",
    "ImageCache",
    "UnreadableImageWarning",
    "build_cache",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "augment_batch",
    "hflip",
    "to_float",
    "LabelMap",
    "OpenSetSplit",
    "openset_split",
    "carve_validation",
]
