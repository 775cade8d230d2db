"""The recipe of a model: every setting that changes what the network sees or how a map becomes a score.

One :class:`Recipe` is built by the training bundle, stored inside the checkpoint next to the weights (as
plain Python types, so the file still loads with ``torch.load(..., weights_only=True)``), and read back by
evaluation, inference, export and the MONAI Label app, which rebuild their preprocessing and head from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Recipe",
    "PRESETS",
    "RECIPE_VERSION",
    "INTENSITY_MODES",
    "PRIOR_REFERENCES",
    "RESIZE_MODES",
    "SLICE_AXCODES",
    "SLICE_AXIS",
    "check_given",
]

RECIPE_VERSION = 1
INTENSITY_MODES = ("percentile", "dtype", "hu")
RESIZE_MODES = ("stretch", "pad")
PRIOR_REFERENCES = ("mean", "nearest", "auto")
PRESETS = ("project", "paper")
"""Named settings: ``"project"`` (the defaults, this project's additions switched on) and ``"paper"`` (the
published Multi-AD model: plain sum of the scales, no teacher prior), see :meth:`Recipe.preset`."""

# the slice convention: data_prep, the dataset transforms and inference all cut volumes this way
SLICE_AXCODES = "PLS"
"""Orientation of a volume before slicing: spatial axis 0 runs anterior -> posterior (slice rows, top = anterior),
axis 1 runs the patient's right -> left (slice columns, left = patient right: radiological display), axis 2 runs
inferior -> superior (slice index 0 = most inferior)."""

SLICE_AXIS = 2
"""Spatial axis (of a channel-first volume ``(C, H, W, D)``: tensor dimension ``SLICE_AXIS + 1``) cut into axial
slices after :class:`~multiad_monai.transforms.OrientForSlicing`."""


def _tuple(value: Any, cast: type) -> tuple | None:
    return None if value is None else tuple(cast(v) for v in value)


@dataclass(frozen=True)
class Recipe:
    """Preprocessing, network and head settings of a Multi-AD model.

    The defaults are this project's model (``Recipe.preset("project")``); :meth:`paper` gives the published one.
    The bundles start from the same values (``bundles/common/train.json``, ``--preset paper`` for the paper's).

    Args:
        image_size: network input ``(H, W)`` (an int means a square).
        intensity: ``"percentile"`` (MRI, OCT: per image / volume), ``"dtype"`` (natural 8/16-bit images: by
            bit depth) or ``"hu"`` (CT: a fixed Hounsfield window).
        percentiles: lower/upper percentiles mapped to 0 and 1 for ``"percentile"``.
        hu_window: Hounsfield range mapped to 0 and 1 for ``"hu"``.
        resize_mode: ``"stretch"`` to the input size, or ``"pad"`` to a square first (keeps the aspect ratio).
        slice_axcodes: orientation volumes are brought to before slicing; recorded so that a model trained
            under another convention is recognised (only ``multiad_monai.transforms.SLICE_AXCODES`` is supported).
        slice_axis: spatial axis of that orientation along which volumes are cut (``SLICE_AXIS``).
        organ_labels: 3D only: label values of the organ the image is masked to (e.g. LiTS ``(1,)``).
        lesion_labels: 3D only: lesion values of the label maps when ``organ_labels`` is given.
        teacher: teacher/student topology, see ``multiad_monai.networks.TEACHERS``.
        layers: distilled stages (None: the teacher's strides 4, 8 and 16).
        student_se: squeeze-and-excitation in the student (False: the ablation without it).
        discriminator_channels: conv widths of the discriminator.
        discriminator_spectral_norm: spectral norm instead of batch norm in the discriminator.
        fusion: ``"sum"``, ``"standardized"`` (the student's scales over their normal std) or ``"product"`` of the
            per-scale maps, see :class:`~multiad_monai.networks.AnomalyMapGenerator`.
        sigma: Gaussian smoothing of the fused map, in pixels (0: none).
        score: ``"max"`` or ``"topk"`` (mean of the ``topk_ratio`` highest pixels).
        topk_ratio: share of pixels averaged by ``score="topk"``.
        threshold_sigmas: default threshold = normal mean + this many standard deviations of normal scores.
        prior_weight: weight of the teacher prior in the anomaly map (0: the paper's student-only map), see
            :class:`~multiad_monai.networks.AnomalyMapGenerator`.
        prior_reference: what the prior compares each teacher feature with: ``"mean"`` (the mean normal feature at
            its location), ``"nearest"`` (the most similar normal training feature there or one location away) or
            ``"auto"`` (the nearest where it fits held-out normal images clearly better, chosen in calibration), see
            :class:`~multiad_monai.networks.AnomalyMapGenerator`.
        adaptive_prior: raise the prior's weight (up to 16x) when the student's distance on held-out normal
            images exceeds that on its training images (a small training set it memorised), see
            :func:`~multiad_monai.networks.anomaly_map.prior_gain`.
    """

    image_size: tuple[int, int] = (256, 256)
    intensity: str = "percentile"
    percentiles: tuple[float, float] = (0.0, 99.5)
    hu_window: tuple[float, float] = (-200.0, 250.0)
    resize_mode: str = "stretch"
    slice_axcodes: str = SLICE_AXCODES
    slice_axis: int = SLICE_AXIS
    organ_labels: tuple[int, ...] | None = None
    lesion_labels: tuple[int, ...] = (2,)
    teacher: str = "efficientnet-lite0"
    layers: tuple[str, ...] | None = None
    student_se: bool = True
    discriminator_channels: tuple[int, ...] = (128, 128)
    discriminator_spectral_norm: bool = False
    fusion: str = "standardized"
    sigma: float = 4.0
    score: str = "max"
    topk_ratio: float = 0.01
    threshold_sigmas: float = 3.0
    prior_weight: float = 1.0
    prior_reference: str = "auto"
    adaptive_prior: bool = True

    def __post_init__(self) -> None:
        # normalise JSON / bundle values (lists, ints for floats) so equal recipes compare equal
        size = self.image_size
        size = (size, size) if isinstance(size, (int, float)) else tuple(size)
        set_ = object.__setattr__
        set_(self, "image_size", _tuple(size, int))
        set_(self, "percentiles", _tuple(self.percentiles, float))
        set_(self, "hu_window", _tuple(self.hu_window, float))
        set_(self, "organ_labels", _tuple(self.organ_labels or None, int))
        set_(self, "lesion_labels", _tuple(self.lesion_labels, int))
        set_(self, "layers", _tuple(self.layers or None, str))
        set_(self, "discriminator_channels", _tuple(self.discriminator_channels, int))
        for name in ("sigma", "topk_ratio", "threshold_sigmas", "prior_weight"):
            set_(self, name, float(getattr(self, name)))
        set_(self, "slice_axis", int(self.slice_axis))
        set_(self, "student_se", bool(self.student_se))
        set_(self, "discriminator_spectral_norm", bool(self.discriminator_spectral_norm))
        set_(self, "adaptive_prior", bool(self.adaptive_prior))
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be a positive int or (H, W), got {size}")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if (self.slice_axcodes, self.slice_axis) != (SLICE_AXCODES, SLICE_AXIS):
            raise ValueError(
                f"slices are cut in {SLICE_AXCODES} along axis {SLICE_AXIS} (as data_prep writes them), got "
                f"{self.slice_axcodes} along axis {self.slice_axis}"
            )
        if self.prior_reference not in PRIOR_REFERENCES:
            raise ValueError(f"prior_reference must be one of {PRIOR_REFERENCES}, got {self.prior_reference!r}")
        if self.prior_weight < 0:
            raise ValueError(f"prior_weight must be >= 0, got {self.prior_weight}")
        for name in ("percentiles", "hu_window"):
            low, high = getattr(self, name)
            if not high > low:
                raise ValueError(f"{name} must be (low, high) with high > low, got {getattr(self, name)}")

    @classmethod
    def paper(cls, **changes: Any) -> Recipe:
        """The published Multi-AD model: the plain sum of the student's per-scale maps, no teacher prior.

        Args:
            changes: other fields (``image_size``, ``intensity``, ...), or these ones overridden.
        """
        return cls(**{**_PAPER, **changes})

    @classmethod
    def preset(cls, name: str, **changes: Any) -> Recipe:
        """The recipe of a named preset (:data:`PRESETS`) with ``changes`` applied on top."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
        return cls.paper(**changes) if name == "paper" else cls(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON / ``weights_only`` types: tuples become lists."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the recipe") -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming ``source``.

        A key missing from ``values`` (a checkpoint written before the field existed) takes the paper's value: the
        field's addition was off then.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source} holds unknown recipe keys {unknown}; known keys: {sorted(names)}")
        return cls.paper(**values)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def differences(self, other: Recipe) -> dict[str, tuple[Any, Any]]:
        """``{key: (this value, other value)}`` for every key where the two recipes differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


_PAPER = {"fusion": "sum", "prior_weight": 0.0, "prior_reference": "mean", "adaptive_prior": False}
"""Where the paper's model differs from :class:`Recipe`'s defaults (the project's)."""


def check_given(recipe: Recipe, given: Mapping[str, Any], source: str) -> Recipe:
    """Check values a user gave (None = not given) against a checkpoint's recipe.

    Args:
        recipe: the recipe stored in the checkpoint ``source``.
        given: ``{key: value}`` from the command line or a config; None means "take the checkpoint's".
        source: the checkpoint's path, for the message.

    Returns:
        ``recipe`` unchanged: a model is always used with the recipe it was trained with.

    Raises:
        ValueError: naming every key whose given value contradicts the checkpoint, with both values.
    """
    given = {key: value for key, value in given.items() if value is not None}
    try:
        merged = recipe.replace(**given)
    except TypeError as e:
        raise ValueError(f"unknown recipe key in {sorted(given)}: {e}") from e
    conflicts = recipe.differences(merged)
    if conflicts:
        details = "; ".join(f"{key}: given {new!r}, checkpoint {old!r}" for key, (old, new) in conflicts.items())
        raise ValueError(
            f"the options given contradict the recipe stored in {source} ({details}). A model is used with the "
            "settings it was trained with: drop these options, or train a model with them"
        )
    return recipe
