"""Build a long-image variant of an MVTec-layout category, to measure what squashing long images costs.

Each image of the new set is ``--tiles`` images of the source set side by side (``H x tiles*W``); an anomalous
image has its defect in one tile (cycling through the positions) and normal test images in the others, with
the mask placed to match. Normal training images are built from training images only. The shared sets have no
long images (a 500x1250 surface scan), so this is how ``keep_aspect`` is measured on real textures:

    python benchmarks/long_images.py --source ../shared/data/piped_paper/PA_BDP01_TL --output runs/long/BDP01 \\
        --invert_masks
    # a 500x1250 surface scan with 150 training strips (random triples of training images), for timing
    python benchmarks/long_images.py --source ../shared/data/piped_paper/PA_BDP01_TL --output runs/long/scan \\
        --invert_masks --size 500 1250 --train_images 150
    python -m monai.bundle run training --config_file bundles/mvtec/train.json --dataset_dir runs/long/BDP01 \\
        --image_size 128 --keep_aspect False --output_dir runs/long/stretch   # 3x narrower along the long side
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from multiad_monai.data import index_dataset


def _read(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _write(path: str, array: np.ndarray, size: tuple[int, int] | None = None, mask: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array)
    if size is not None:  # (height, width); PIL takes (width, height)
        image = image.resize(size[::-1], Image.NEAREST if mask else Image.BICUBIC)
    image.save(path)


def _mask(item: dict, shape: tuple[int, int], invert: bool) -> np.ndarray:
    mask = _read(item["mask"]) > 127
    if mask.shape != shape:
        raise ValueError(f"mask {item['mask']} is {mask.shape[:2]}, its image {item['image']} is {shape}")
    return (mask != invert).astype(np.uint8) * 255


def build(
    source: str,
    output: str,
    tiles: int = 3,
    invert_masks: bool = False,
    size: tuple[int, int] | None = None,
    train_images: int | None = None,
    seed: int = 0,
) -> str:
    """Write the long variant of the MVTec-layout folder ``source`` to ``output`` (masks always white-on-black).

    ``size`` resizes every strip to ``(height, width)``; ``train_images`` builds that many training strips from
    random (seeded) choices of ``tiles`` training images instead of one per training image.
    """
    _, splits = index_dataset(source)
    train = [item["image"] for item in splits["train"]]
    good = [item["image"] for item in splits["test"] if not item["label"]]
    bad = [item for item in splits["test"] if item["label"]]
    if not good:
        raise ValueError(f"{source} has no normal test images to fill the other tiles of anomalous ones")

    def strip(paths: list[str]) -> np.ndarray:
        return np.concatenate([_read(p) for p in paths], axis=1)

    def ring(paths: list[str], start: int) -> list[str]:
        return [paths[(start + k) % len(paths)] for k in range(tiles)]

    rng = np.random.default_rng(seed)
    for i in range(train_images or len(train)):
        paths = ring(train, i) if train_images is None else [train[k] for k in rng.permutation(len(train))[:tiles]]
        _write(f"{output}/train/good/{i:03d}.png", strip(paths), size)
    for i in range(len(good)):
        _write(f"{output}/test/good/{i:03d}.png", strip(ring(good, i)), size)
    for i, item in enumerate(bad):
        position, fillers = i % tiles, ring(good, i)
        paths = fillers[:position] + [item["image"]] + fillers[position + 1 : tiles]
        image = strip(paths)
        height, width = image.shape[:2]
        tile = width // tiles
        mask = np.zeros((height, width), np.uint8)
        if "mask" in item:
            mask[:, position * tile : (position + 1) * tile] = _mask(item, (height, tile), invert_masks)
        _write(f"{output}/test/defect/{i:03d}.png", image, size)
        _write(f"{output}/ground_truth/defect/{i:03d}_mask.png", mask, size, mask=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="an MVTec-layout category folder")
    parser.add_argument("--output", required=True)
    parser.add_argument("--tiles", type=int, default=3)
    parser.add_argument("--invert_masks", action="store_true", help="the source draws defects in black (PIPED)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="resize every strip")
    parser.add_argument("--train_images", type=int, help="training strips of random training images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = tuple(args.size) if args.size else None
    print(build(args.source, args.output, args.tiles, args.invert_masks, size, args.train_images, args.seed))


if __name__ == "__main__":
    main()
