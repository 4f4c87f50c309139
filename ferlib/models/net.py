"""The network: a trunk and a head, built from a :class:`ModelConfig`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ferlib.models.base import ForwardOutput, ModelConfig
from ferlib.models.dlib_reader import sha256_of
from ferlib.models.face_weights import PACKAGED_WEIGHTS, load_dlib_face
from ferlib.models.registry import make_head
from ferlib.models.trunk import build_trunk
from ferlib.models.weights import load_pretrained, upgrade_legacy_state_dict


class FERNet(nn.Module):
    """``trunk`` (feature map) + ``head`` (logits, pooled features, extras).

    ``forward`` returns the logits only, so plain losses and ``nn.Module`` tooling work;
    :meth:`forward_all` returns the whole :class:`ForwardOutput`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = build_trunk(cfg)
        self.head = make_head(cfg.head, self.trunk.out_channels, cfg.num_classes, cfg.dropout, cfg.head_params)
        self.num_features = self.trunk.out_channels
        self.register_load_state_dict_pre_hook(upgrade_legacy_state_dict)
        #: which pretrained weights :func:`build_model` loaded (None: from scratch)
        self.pretrained_record: dict | None = None

    @property
    def supports_cam(self) -> bool:
        """Whether :meth:`cam` is available (objectives that compare attention maps check it)."""
        return self.head.supports_cam

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward_all(self, x: torch.Tensor, pyramid: bool = False) -> ForwardOutput:
        """Logits, pooled features, the trunk's last map and the head's extras.

        ``pyramid`` adds ``extras["pyramid"]``: the global average of every trunk stage's
        output after the stem, concatenated (smallface: 64 + 128 + 256 = 448 values). Why:
        the head pools only the last stage, which training shaped to separate the close
        classes; the earlier stages keep texture and part evidence that the classifier
        discarded, and a detector that learns a new boundary on frozen features (an open
        class the classifier never saw) can use it (multi-layer features, as in Lee et
        al.'s Mahalanobis detector, NeurIPS 2018). Computed in the same pass, no extra cost."""
        if not pyramid:
            fmap = self.trunk(x)
            out = self.head(fmap)
            return ForwardOutput(out.logits, out.features, fmap, out.extras)
        maps = self.trunk.stage_maps(x)
        fmap = maps[-1]
        out = self.head(fmap)
        pooled = torch.cat([m.float().mean(dim=(2, 3)) for m in (maps[1:] or maps)], dim=1)
        return ForwardOutput(out.logits, out.features, fmap, {**out.extras, "pyramid": pooled})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits

    def forward_until(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The trunk's map entering stage ``stage`` (see :class:`~ferlib.models.trunk.Trunk`)."""
        return self.trunk.forward_until(x, stage)

    def forward_from(self, h: torch.Tensor, stage: int) -> ForwardOutput:
        """Everything :meth:`forward_all` gives, from the map ``h`` entering trunk stage
        ``stage`` (e.g. a mixture of two samples' maps)."""
        fmap = self.trunk.forward_from(h, stage)
        out = self.head(fmap)
        return ForwardOutput(out.logits, out.features, fmap, out.extras)

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Class activation maps (B, K, h, w) of the head (see the head's ``cam``)."""
        return self.head.cam(feature_map)


def build_model(cfg: ModelConfig, verbose: bool = True) -> FERNet:
    """Build a :class:`FERNet`; load weights when ``cfg.pretrained`` names a file, or
    ``"dlibface"`` (dlib's face-recognition ResNet from the installed face extra, for the
    ``dlibface`` trunks; :mod:`ferlib.models.face_weights`).

    ``model.pretrained_record`` says which weights were loaded (name, SHA-256 of the file,
    tensors loaded; None from scratch), for results and manifests.

    Without weights the model starts from scratch, and says so: results from scratch are
    not comparable with the papers' face-pretrained numbers.
    """
    model = FERNet(cfg)
    if cfg.pretrained in PACKAGED_WEIGHTS:  # weights shipped by an installed package (face extra)
        model.pretrained_record = load_dlib_face(model, verbose=verbose)
    elif cfg.pretrained and str(cfg.pretrained).endswith(".dat"):  # a dlib file of the same network
        model.pretrained_record = load_dlib_face(model, cfg.pretrained, verbose=verbose)
    elif cfg.pretrained:
        report = load_pretrained(model, cfg.pretrained, verbose=verbose)
        model.pretrained_record = {
            "weights": Path(cfg.pretrained).name,
            "source_sha256": sha256_of(cfg.pretrained),
            "tensors_loaded": len(report.loaded),
        }
    elif cfg.arch in PACKAGED_WEIGHTS["dlibface"]:
        if verbose:
            print(
                f"{cfg.arch}: no pretrained weights given; this trunk's affine layers do not normalise, so it is "
                "meant to start from pretrained='dlibface' (from scratch, use smallface)"
            )
    elif verbose:
        print(
            f"{cfg.arch}: no pretrained weights given; training from scratch "
            "(the papers start from face-recognition weights)"
        )
    return model
