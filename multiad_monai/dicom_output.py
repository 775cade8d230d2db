"""DICOM results of a DICOM series: the anomaly label as a Segmentation, the heat map as a Parametric Map.

Both are highdicom objects that reference the source series instance by instance, share its study and frame of
reference, and carry one frame per source slice at that slice's position, so a viewer (3D Slicer, OHIF) lays
them over the study and a PACS stores them beside it.

- **Segmentation** (``<name>_seg.dcm``): one binary segment ``anomaly``, 1 where the normalised map exceeds the
  threshold (0.5 = the checkpoint's calibrated pixel threshold); the algorithm identification names Multi-AD,
  the package version, the threshold and the checkpoint's SHA-256; frames only where the label is non-empty
  (highdicom keeps every frame of an all-empty label, as the standard needs at least one).
- **Parametric Map** (``<name>_heatmap.dcm``) for the heat map: the IOD made for float quantities derived from
  images. It keeps the normalised map as 32-bit floats in ``[0, 1]`` with a real-world value mapping (0.5 = the
  threshold), which a derived CT or MR series could not: their pixels are integers, and a derived series would
  pose as an acquisition.

They need highdicom (the ``dicom`` extra).
"""

from __future__ import annotations

import logging

import numpy as np

from multiad_monai import __version__
from multiad_monai.transforms.dicom import DICOM_EXTRA, DicomSeries

__all__ = ["write_heatmap", "write_segmentation"]

ALGORITHM = "Multi-AD"
MANUFACTURER = "multiad-monai"
SEG_SERIES_NUMBER_OFFSET = 9000  # results sort after the source series in a viewer's series list


def _highdicom():
    try:
        import highdicom
    except ImportError:
        message = f"writing DICOM SEG and parametric maps needs highdicom, from the dicom extra: {DICOM_EXTRA}"
        raise ImportError(message) from None
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every attribute module it copies at INFO
    return highdicom


def _sources(series: DicomSeries) -> list:
    import pydicom

    return [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]


def _frames(volume: np.ndarray, series: DicomSeries) -> np.ndarray:
    """A volume in ITK's array order ``(columns, rows, slices)`` -> frames ``(slices, rows, columns)``."""
    frames = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)))
    expected = len(series.files) if not series.frames else series.frames
    if frames.shape[0] != expected:
        raise ValueError(f"a map of {frames.shape[0]} slices does not fit {series.label} ({expected} frames)")
    return frames


def _new_series(hd, series: DicomSeries, offset: int, what: str, checkpoint_sha256: str) -> dict:
    """The identification of a result series derived from ``series``: new UIDs, numbered after the source's."""
    return {
        "series_instance_uid": hd.UID(),
        "series_number": SEG_SERIES_NUMBER_OFFSET + offset + (series.number or 0),
        "sop_instance_uid": hd.UID(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": ALGORITHM,
        "software_versions": __version__,
        "device_serial_number": checkpoint_sha256[:16] or "none",
        "series_description": f"{what} ({series.description or series.name})"[:64],  # LO: 64 characters
    }


def write_segmentation(
    series: DicomSeries,
    label: np.ndarray,
    path: str,
    threshold: float = 0.5,
    checkpoint_sha256: str = "",
    reviewed: bool = False,
) -> None:
    """Write ``label`` (``(columns, rows, slices)``, non-zero = anomalous) as a DICOM SEG of ``series`` to ``path``.

    Args:
        threshold: the rule of an automatic label (algorithm identification).
        checkpoint_sha256: the weights of an automatic label (algorithm identification).
        reviewed: the label is a person's final one (segment algorithm type MANUAL, no algorithm identification).
    """
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM,
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        parameters={  # "k=v,k=v" in the file: values hold neither "=" nor ","
            "rule": f"normalised anomaly map > {threshold:g} (0.5 is the calibrated pixel threshold)",
            "checkpoint_sha256": checkpoint_sha256,
        },
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Abnormal,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL if reviewed else "AUTOMATIC",
        algorithm_identification=None if reviewed else algorithm,
    )
    frames = _frames(label, series) > 0
    seg = hd.seg.Segmentation(
        source_images=_sources(series),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        **_new_series(
            hd,
            series,
            2 if reviewed else 0,
            "anomaly, reviewed" if reviewed else f"Multi-AD anomaly > {threshold:g}",
            checkpoint_sha256,
        ),
        omit_empty_frames=bool(frames.any()),  # an empty label keeps its frames: a SEG needs one at least
    )
    seg.save_as(path)


def write_heatmap(series: DicomSeries, heatmap: np.ndarray, path: str, checkpoint_sha256: str) -> None:
    """Write the normalised map (``(columns, rows, slices)`` in ``[0, 1]``) as a Parametric Map of ``series``."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    mapping = hd.pm.RealWorldValueMapping(
        lut_label="anomaly",
        lut_explanation="normalised anomaly map; 0.5 = calibrated threshold",  # LO: 64 characters at most
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=_sources(series),
        pixel_array=np.clip(_frames(heatmap, series), 0.0, 1.0).astype(np.float32),
        **_new_series(hd, series, 1, "Multi-AD heat map", checkpoint_sha256),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        window_center=0.5,
        window_width=1.0,
        content_label="ANOMALY",
    )
    pm.Laterality = ""  # General Series type 2C: the map inherits no laterality of its own
    pm.save_as(path)
