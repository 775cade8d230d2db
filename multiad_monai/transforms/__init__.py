from .array import CheckHounsfield, EnsureRGB, PadToSquare, ScaleIntensityByDtype, VolumeToSlices, source_name
from .dictionary import (
    CheckHounsfieldd,
    EnsureMaskd,
    EnsureRGBd,
    PadToSquared,
    ScaleIntensityByDtyped,
    SplitLabelsd,
    VolumeToSlicesd,
)
from .preprocessing import (
    image_transform,
    intensity_transform,
    network_input,
    resize_transform,
    slice_transform,
    slicing_transform,
    volume_transform,
)
