"""Export a trained, calibrated :class:`MultiAD` to a self-contained TorchScript file for deployment.

The file holds only what inference needs (teacher, student, anomaly-map head and the normal-score
statistics, no discriminator) and a ``multiad.json`` entry with its metadata, so a consumer needs neither
``multiad_monai`` nor MONAI, only torch::

    python -m multiad_monai.export --ckpt_path bundles/brain/outputs/model.pt --output model.ts

    # consumer side
    extra = {"multiad.json": ""}
    model = torch.jit.load("model.ts", _extra_files=extra)
    meta = json.loads(extra["multiad.json"])  # recipe (image_size, intensity, ...), image_threshold, ...
    with torch.no_grad():
        anomaly_map, pred_score, normalized_score = model(images)  # (N, 3, H, W) in [0, 1], (H, W) = image_size

The model is traced, so Python-level choices are frozen at export time. Feed it images preprocessed as
the recipe in ``multiad.json`` says (``multiad_monai.transforms.preprocessing`` builds that chain), at the
``image_size`` it was trained and calibrated at: MONAI's EfficientNet uses static "same" padding computed
once when the network is built, so other sizes still run (and agree with the eager model for
``score="max"``), but the calibration statistics only hold at the training size, and with ``score="topk"``
the number of averaged pixels is fixed by the traced size. So the file refuses, with a message naming the fix,
inputs of another size, layout, dtype or value range (:func:`multiad_monai.networks.inputs.check_images`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from multiad_monai import __version__
from multiad_monai.checkpoint import CALIBRATION_BUFFERS, load_model
from multiad_monai.networks.inputs import check_images
from multiad_monai.networks.multiad import MultiAD
from multiad_monai.networks.normalizer import normalize_to_threshold
from multiad_monai.utils import atomic_write, check_writable

__all__ = ["ExportableMultiAD", "InputChecked", "export_torchscript", "export_metadata", "METADATA_FILE"]

METADATA_FILE = "multiad.json"


class ExportableMultiAD(nn.Module):
    """Inference-only snapshot of a calibrated :class:`MultiAD`: teacher, student and anomaly-map head.

    The sub-modules are copied and frozen (``requires_grad=False``, eval mode), so later training of
    ``network`` does not change this module and its outputs never require gradients. It is traceable
    with ``torch.jit.trace``; ``torch.jit.script`` fails on MONAI's ``MBConvBlock`` (optional SE
    attributes), so :func:`export_torchscript` traces.

    Args:
        network: a calibrated :class:`MultiAD` (see :func:`multiad_monai.calibration.calibrate`).

    Raises:
        ValueError: when ``network`` is not calibrated.
    """

    def __init__(self, network: MultiAD) -> None:
        super().__init__()
        if not network.is_calibrated:
            raise ValueError(
                "the network is not calibrated: run multiad_monai.calibration.calibrate (or CalibrationHandler) on "
                "normal images after training, or load the final checkpoint written after calibration"
            )
        self.network = copy.deepcopy(network)
        del self.network.discriminator  # training only
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: ``(N, 3, H, W)`` RGB in ``[0, 1]``, at the training ``image_size``.

        Returns:
            raw anomaly map ``(N, 1, H, W)``, raw image score ``(N,)`` and the score normalised to ``[0, 1]``
            ``(N,)`` (normal mean -> 0, default threshold -> 0.5), as :meth:`MultiAD.normalize_score`.
        """
        network = self.network
        teacher, student = network.teacher(images), network.student(images)
        anomaly_map, score = network.score_features(teacher, student, images.shape[-2:])
        stats = network.normalizer  # without its calibration check, which would be traced as a constant
        normalized = normalize_to_threshold(score, stats.score_mean, stats.score_std, stats.threshold_sigmas)
        return anomaly_map, score, normalized


class InputChecked(nn.Module):
    """A traced model behind :func:`~multiad_monai.networks.inputs.check_images`: scripted, so the check runs
    on every call of the exported file (a traced check would be frozen at the example's shape).

    Args:
        model: the traced :class:`ExportableMultiAD`.
        height: the recipe's ``image_size`` (height).
        width: its width.
    """

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.model = model
        self.height = height
        self.width = width

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_images(images, self.height, self.width)
        return self.model(images)


def export_metadata(network: MultiAD) -> dict:
    """What a consumer of the exported file needs to know, as plain JSON types: the recipe and calibration.

    Args:
        network: the calibrated :class:`MultiAD` being exported.
    """
    height, width = network.recipe.image_size
    return {
        "format": "multiad-torchscript",
        "format_version": 1,
        "multiad_monai_version": __version__,
        "torch_version": torch.__version__,
        "input": f"float32 (N, 3, {height}, {width}) RGB in [0, 1], preprocessed as the recipe says",
        "outputs": ["anomaly_map (N, 1, H, W)", "pred_score (N,)", "normalized_score (N,)"],
        "recipe": network.recipe.to_dict(),
        "layers": list(network.teacher.layers),
        "image_threshold": float(network.image_threshold),
        "pixel_threshold": float(network.pixel_threshold),
        "normalized_threshold": 0.5,
        **{name: float(getattr(network.normalizer, name)) for name in CALIBRATION_BUFFERS},
    }


def export_torchscript(
    network: MultiAD, path: str, device: str | torch.device = "cpu", check_trace: bool = True
) -> None:
    """Trace a calibrated network and save it, with its metadata, as a TorchScript file.

    The file is written through a temporary file and a rename, so ``path`` is either the complete new
    file or untouched. Trace on CPU for a portable file: constants made while tracing (the Gaussian
    kernel) live on the tracing device.

    Args:
        network: a calibrated :class:`MultiAD`; it is not modified.
        path: output file, e.g. ``model.ts``; its folder is created if needed.
        device: where to trace.
        check_trace: let ``torch.jit.trace`` re-trace and compare outputs (slower, catches data-dependent code).

    Raises:
        ValueError: when the network is not calibrated or its input size is too small.
    """
    image_size = network.recipe.image_size
    if min(image_size) < 32:
        raise ValueError(f"image_size must be at least 32 (the deepest features have stride 32), got {image_size}")
    module = ExportableMultiAD(network).to(device)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, *image_size, generator=generator).to(device)
    with warnings.catch_warnings():
        # MONAI's GaussianFilter builds its kernel from the (fixed) sigma in Python: a constant, as intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"monai\.networks\.layers")
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=check_trace)
    checked = torch.jit.script(InputChecked(traced, *image_size))
    extra_files = {METADATA_FILE: json.dumps(export_metadata(network), indent=2)}
    atomic_write(path, lambda tmp: torch.jit.save(checked, tmp, _extra_files=extra_files))


def main(argv: Sequence[str] | None = None) -> str:
    """CLI entry point; returns (and prints) the path of the written TorchScript file."""
    parser = argparse.ArgumentParser(
        prog="python -m multiad_monai.export",
        description="Export a calibrated Multi-AD checkpoint to TorchScript (with multiad.json metadata). "
        "The network, its head and input size come from the recipe stored in the checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the trained, calibrated model (bundle ckpt_path)")
    parser.add_argument("--output", required=True, help="TorchScript file to write, e.g. model.ts")
    parser.add_argument("--image_size", type=int, help="optional check: must equal the checkpoint's input size")
    parser.add_argument("--device", default="cpu", help="tracing device; cpu gives a portable file")
    args = parser.parse_args(argv)
    try:  # bad arguments and files end with their message, not a traceback
        check_writable(args.output, "--output")  # before the work
        network = load_model(args.ckpt_path, image_size=args.image_size)
        export_torchscript(network, args.output, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    print(os.path.abspath(args.output))
    return os.path.abspath(args.output)


if __name__ == "__main__":
    main()
