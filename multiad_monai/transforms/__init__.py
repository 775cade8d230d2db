from .array import EnsureRGB, VolumeToSlices, source_name
from .dictionary import EnsureMaskd, EnsureRGBd, VolumeToSlicesd
