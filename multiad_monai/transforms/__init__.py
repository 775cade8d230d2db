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
