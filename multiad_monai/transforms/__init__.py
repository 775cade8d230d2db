from .array import (
    SLICE_AXCODES,
    SLICE_AXIS,
    CheckHounsfield,
    EnsureRGB,
    OrientForSlicing,
    PadToSquare,
    ScaleIntensityByDtype,
    VolumeToSlices,
    load_volume_for_slicing,
    oriented_shape,
    source_name,
)
from .dictionary import (
    CheckHounsfieldd,
    EnsureMaskd,
    EnsureRGBd,
    OrientForSlicingd,
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
