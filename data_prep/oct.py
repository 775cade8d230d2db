"""Retinal OCT datasets to the BMAD layout: two sub-commands, ``oct2017`` and ``resc``.

``oct2017`` (Kermany et al.): ``<input_dir>/{train,test}/{NORMAL,CNV,DME,DRUSEN}/CLASS-PATIENT-N.jpeg``.
Training NORMAL images go to ``train/good`` (the abnormal training images are not used); the original test set is
split by patient into ``valid/`` (``--valid_fraction``) and ``test/``, NORMAL images to ``good``, CNV / DME /
DRUSEN to ``Ungood``. Image-level labels only: no masks are written. Images keep their size, as grey PNGs.

``resc``: RESC as distributed for BMAD, ``<input_dir>/train/good/*.png`` and
``<input_dir>/{valid,test}/{good,Ungood}/{img,label}/*.png`` (masks 0/1 or 0/255; ``good`` masks optional),
rewritten as grey PNGs with 0/255 masks checked against their image's size.

Usage::

    python -m data_prep.oct oct2017 --input_dir OCT2017 --output_dir data/oct2017
    python -m data_prep.oct resc --input_dir RESC --output_dir data/resc
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from data_prep.common import (
    GOOD,
    UNGOOD,
    BmadWriter,
    add_split_arguments,
    prepare_output_dir,
    read_grey,
    read_mask,
    require_dir,
    run_converter,
    split_ids,
)
from multiad_monai.data.layouts import IMAGE_EXTENSIONS

__all__ = ["NORMAL", "ABNORMAL", "oct2017_patient", "convert_oct2017", "convert_resc", "main"]

logger = logging.getLogger(__name__)

NORMAL = "NORMAL"
ABNORMAL = ("CNV", "DME", "DRUSEN")


def _images(folder: str, what: str, required: bool = True) -> list[str]:
    """Sorted image files of ``folder``; raise naming the folder when it is missing or (``required``) empty."""
    if not required and not os.path.isdir(folder):
        return []
    require_dir(folder, what)
    files = sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )
    if required and not files:
        raise ValueError(f"no {what} image in {folder}")
    return files


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


# ----------------------------------------------------------------------------------------------- OCT2017
def oct2017_patient(path: str) -> str:
    """Patient id of an OCT2017 file: ``CNV-1016042-1.jpeg`` -> ``1016042``.

    Raises:
        ValueError: naming the file when it does not follow ``CLASS-PATIENT-N``.
    """
    parts = _stem(path).split("-")
    if len(parts) < 3 or not parts[1]:
        raise ValueError(f"{path}: OCT2017 file names must read CLASS-PATIENT-N.jpeg (e.g. CNV-1016042-1.jpeg)")
    return parts[1]


def convert_oct2017(input_dir: str, output_dir: str, valid_fraction: float = 0.1, seed: int = 0) -> Counter[str]:
    """Convert OCT2017 to the image-level BMAD layout (see the module docstring).

    Args:
        input_dir: folder holding ``train/`` and ``test/``.
        output_dir: new (or empty) output folder.
        valid_fraction: share of the test-set patients moved to ``valid/``.
        seed: seed of the patient split.

    Returns:
        Written images per ``"<split>/<class>"``.
    """
    require_dir(input_dir, "OCT2017 input")
    train = _images(os.path.join(input_dir, "train", NORMAL), "OCT2017 training NORMAL")
    test = [(path, GOOD) for path in _images(os.path.join(input_dir, "test", NORMAL), "OCT2017 test NORMAL")]
    for cls in ABNORMAL:
        test += [(path, UNGOOD) for path in _images(os.path.join(input_dir, "test", cls), f"OCT2017 test {cls}")]
    patients = {path: oct2017_patient(path) for path in train + [p for p, _ in test]}  # checks every name first
    test_patients = {patients[path] for path, _ in test}
    shared = test_patients & {patients[path] for path in train}
    if shared:
        logger.warning(f"{len(shared)} test patients also have NORMAL training images, e.g. {sorted(shared)[0]}")
    assignment = split_ids(test_patients, {"valid": valid_fraction}, seed, rest="test")
    prepare_output_dir(output_dir)
    writer = BmadWriter(output_dir, with_masks=False)
    for path in train:
        writer.write("train", GOOD, _stem(path), read_grey(path))
    for path, cls in test:
        writer.write(assignment[patients[path]], cls, _stem(path), read_grey(path))
    logger.info(f"{input_dir} -> {output_dir}: {dict(sorted(writer.counts.items()))}")
    return writer.counts


# ----------------------------------------------------------------------------------------------- RESC
def _resc_samples(input_dir: str) -> list[tuple[str, str, str, str | None]]:
    """List ``(split, class, image, mask or None)`` of a RESC folder, failing on a missing anomalous mask."""
    require_dir(input_dir, "RESC input")
    samples = [("train", GOOD, path, None) for path in _images(os.path.join(input_dir, "train", GOOD), "RESC train")]
    for split in ("valid", "test"):
        for cls in (GOOD, UNGOOD):
            folder = os.path.join(input_dir, split, cls)
            masks = {_stem(p): p for p in _images(os.path.join(folder, "label"), "", required=False)}
            for image in _images(os.path.join(folder, "img"), f"RESC {split}/{cls}", required=split == "test"):
                mask = masks.get(_stem(image))
                if mask is None and cls == UNGOOD:
                    raise FileNotFoundError(f"anomalous image {image} has no mask in {os.path.join(folder, 'label')}")
                samples.append((split, cls, image, mask))
    return samples


def convert_resc(input_dir: str, output_dir: str) -> Counter[str]:
    """Normalise a RESC folder to the BMAD layout (see the module docstring).

    Args:
        input_dir: RESC folder holding ``train/``, ``test/`` and optionally ``valid/``.
        output_dir: new (or empty) output folder.

    Returns:
        Written images per ``"<split>/<class>"``.

    Raises:
        FileNotFoundError / ValueError: naming the file: a missing folder or anomalous mask, an unreadable
            image, a mask of another size than its image, a normal image whose mask is not empty.
    """
    samples = _resc_samples(input_dir)
    prepare_output_dir(output_dir)
    writer = BmadWriter(output_dir, with_masks=True)
    for split, cls, image_path, mask_path in samples:
        image = read_grey(image_path)
        mask = None if mask_path is None else read_mask(mask_path)
        if mask is not None and mask.shape != image.shape:
            raise ValueError(f"mask {mask_path} has size {mask.shape} but its image {image_path} has {image.shape}")
        if mask is not None and cls == GOOD and np.any(mask):
            raise ValueError(f"mask {mask_path} of normal image {image_path} is not empty")
        writer.write(split, cls, _stem(image_path), image, mask)
    logger.info(f"{input_dir} -> {output_dir}: {dict(sorted(writer.counts.items()))}")
    return writer.counts


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m data_prep.oct {oct2017,resc} --input_dir IN --output_dir OUT [options]``."""
    parser = argparse.ArgumentParser(prog="data_prep.oct", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    oct2017 = commands.add_parser("oct2017", help="OCT2017 (Kermany): {train,test}/{NORMAL,CNV,DME,DRUSEN}/*.jpeg")
    resc = commands.add_parser("resc", help="RESC: train/good, {valid,test}/{good,Ungood}/{img,label}")
    for command in (oct2017, resc):
        command.add_argument("--input_dir", required=True, help="the dataset as downloaded")
        command.add_argument("--output_dir", required=True, help="new or empty folder for the BMAD layout")
    add_split_arguments(oct2017, valid_fraction=0.1)
    args = parser.parse_args(argv)
    if args.command == "oct2017":
        return run_converter(
            f"{parser.prog} oct2017",
            lambda: convert_oct2017(args.input_dir, args.output_dir, args.valid_fraction, args.seed),
        )
    return run_converter(f"{parser.prog} resc", lambda: convert_resc(args.input_dir, args.output_dir))


if __name__ == "__main__":
    raise SystemExit(main())
