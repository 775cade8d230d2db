"""Save a few anomaly-map overlays of an evaluation as PNG files (logged to MLflow as artifacts)."""

from __future__ import annotations

import os

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from PIL import Image

from multiad_monai.networks.multiad import MultiAD
from multiad_monai.upstream import mlflow_run_and_client
from multiad_monai.utils import MultiADKeys
from multiad_monai.visualize import overlay

__all__ = ["OverlaySaver"]


class OverlaySaver:
    """Keeps the first ``num_images // 2`` anomalous and normal samples and writes their overlays.

    Maps are normalised with the model's calibration (threshold at 0.5) when available, else min-max
    over the kept samples.

    Args:
        output_dir: the PNGs go to ``{output_dir}/overlays/``.
        network: the evaluated model, for its calibration statistics.
        num_images: how many overlays to write.
        mlflow_handler: when given, the overlays are also logged to its run as MLflow images under ``overlays/``.
    """

    def __init__(
        self, output_dir: str, network: MultiAD, num_images: int = 8, mlflow_handler: MLFlowHandler | None = None
    ) -> None:
        self.overlay_dir = os.path.join(output_dir, "overlays")
        self.mlflow_handler = mlflow_handler
        self.network = network
        self.per_class = max(1, num_images // 2)
        self.samples: dict[int, list] = {0: [], 1: []}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def reset(self, engine: Engine) -> None:
        self.samples = {0: [], 1: []}

    def collect(self, engine: Engine) -> None:
        output = engine.state.output
        masks = output.get(MultiADKeys.MASK)
        for i, label in enumerate(output["label"].tolist()):
            kept = self.samples[int(label > 0)]
            if len(kept) < self.per_class:
                mask = None if masks is None else masks[i, 0].cpu().numpy()
                kept.append((output["image"][i].cpu(), output[MultiADKeys.ANOMALY_MAP][i, 0].cpu(), mask))

    def __call__(self, engine: Engine) -> None:
        os.makedirs(self.overlay_dir, exist_ok=True)
        kept = [(label, sample) for label in (1, 0) for sample in self.samples[label]]
        if not kept:
            return
        maps = torch.stack([sample[1] for _, sample in kept])
        if self.network.is_calibrated:
            maps = self.network.normalize_map(maps).cpu()
        else:
            maps = (maps - maps.min()) / (maps.max() - maps.min()).clamp_min(1e-8)
        mlflow = mlflow_run_and_client(self.mlflow_handler)
        for index, ((label, (image, _, mask)), anomaly_map) in enumerate(zip(kept, maps)):
            name = f"{index:02d}_{'anomalous' if label else 'normal'}.png"
            side_by_side = np.concatenate(
                [
                    overlay(image.numpy(), np.zeros_like(anomaly_map), None, 0.0),
                    overlay(image.numpy(), anomaly_map.numpy(), mask),
                ],
                1,
            )
            Image.fromarray(side_by_side).save(os.path.join(self.overlay_dir, name))
            if mlflow is not None:
                run, client = mlflow
                client.log_image(run.info.run_id, side_by_side, artifact_file=f"overlays/{name}")
