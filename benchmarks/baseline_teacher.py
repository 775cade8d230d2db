"""Baseline without a student: the anomaly map is ``1 - cos`` between each teacher feature and the mean
normal teacher feature at the same location, fused and smoothed exactly like Multi-AD's map.

It answers "do the student and the discriminator earn their place?" on the same data and teacher.

    python benchmarks/baseline_teacher.py --dataset_dir ../shared/data/lgg_dev --image_size 128
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from monai.data import DataLoader

from multiad_monai.data import load_datasets
from multiad_monai.metrics import image_auroc, image_f1_max, pixel_aupro, pixel_auroc
from multiad_monai.networks import AnomalyMapGenerator, build_teacher
from multiad_monai.recipe import Recipe


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--intensity", default="percentile", choices=["percentile", "dtype", "hu"])
    parser.add_argument("--invert_masks", action="store_true", help="masks draw defects in black (PIPED)")
    # Multi-AD holds out calibration images by seed; the same seed gives the mean the same training images
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration split, as in training")
    parser.add_argument("--output", help="optional JSON file for the metrics")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    recipe = Recipe(image_size=args.image_size, intensity=args.intensity, sigma=args.sigma)
    data = load_datasets(args.dataset_dir, recipe, seed=args.seed, invert_masks=args.invert_masks)
    teacher = build_teacher()
    head = AnomalyMapGenerator(sigma=args.sigma)
    start = time.perf_counter()
    sums = None
    for batch in DataLoader(data.train, batch_size=args.batch_size):
        features = [f.sum(0) for f in teacher(batch["image"])]
        sums = features if sums is None else [s + f for s, f in zip(sums, features)]
    means = [s[None] / len(data.train) for s in sums]
    fit_seconds = time.perf_counter() - start

    scores, labels, maps, masks = [], [], [], []
    for batch in DataLoader(data.test, batch_size=args.batch_size):
        features = teacher(batch["image"])
        anomaly_map, score = head(
            features, [m.expand_as(f) for m, f in zip(means, features)], batch["image"].shape[-2:]
        )
        (
            scores.append(score),
            labels.append(batch["label"]),
            maps.append(anomaly_map[:, 0]),
            masks.append(batch["mask"][:, 0]),
        )
    scores, labels = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    maps, masks = torch.cat(maps).numpy(), torch.cat(masks).numpy() > 0
    metrics = {
        "image_auroc": image_auroc(scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_aupro": pixel_aupro(maps, masks),
        "image_f1_max": image_f1_max(scores, labels),
        "fit_seconds": round(fit_seconds, 1),
    }
    print(json.dumps(metrics, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    main()
