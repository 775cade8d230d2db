"""One anatomy, many storages: rewrite a volume in another voxel order with the affine that keeps it in place.

Scanners and converters store the same patient RAS, LPS, with swapped in-plane axes or slice axis first; the
slice convention must give the same slices for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# (name, order, flip) for :func:`store_as` applied to an RAS-stored volume; the name is the storage's axis codes
STORAGES = [
    ("RAS", (0, 1, 2), (False, False, False)),
    ("LPS", (0, 1, 2), (True, True, False)),  # BraTS, many DICOM conversions
    ("PLS", (1, 0, 2), (True, True, False)),  # LPS with the in-plane axes swapped: the slice convention itself
    ("ARI", (1, 0, 2), (False, False, True)),  # in-plane axes swapped, slices stored superior first
    ("SAR", (2, 1, 0), (False, False, False)),  # slice axis first
    ("ILP", (2, 0, 1), (True, True, True)),  # slice axis first, every axis reversed
]


def store_as(
    array: np.ndarray, affine: np.ndarray, order: Sequence[int], flip: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored differently: transpose the array and build the matching affine.

    Args:
        array: ``(X, Y, Z)`` volume.
        affine: its voxel-to-world affine ``(4, 4)``.
        order: stored axis ``i`` of the result is axis ``order[i]`` of ``array``...
        flip: ...reversed where ``flip[i]``.

    Returns:
        ``(array, affine)``: every voxel keeps its world position.
    """
    out = np.transpose(array, order)
    index_map = np.zeros((4, 4))  # new voxel index -> old voxel index
    index_map[3, 3] = 1.0
    for i, (axis, reverse) in enumerate(zip(order, flip)):
        index_map[axis, i] = -1.0 if reverse else 1.0
        if reverse:
            out = np.flip(out, i)
            index_map[axis, 3] = out.shape[i] - 1
    return np.ascontiguousarray(out), affine @ index_map
