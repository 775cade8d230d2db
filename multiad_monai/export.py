"""Export a trained, calibrated :class:`MultiAD` to a self-contained TorchScript file for deployment.

The file holds only what inference needs (teacher, student, anomaly-map head and the normal-score
statistics, no discriminator) and a ``multiad.json`` entry with its metadata, so a consumer needs neither
``multiad_monai`` nor MONAI, only torch::

    python -m multiad_monai.export --ckpt_path bundles/brain/models/model.pt --output model.ts --image_size 128

    # consumer side
    extra = {"multiad.json": ""}
    model = torch.jit.load("model.ts", _extra_files=extra)
    meta = json.loads(extra["multiad.json"])  # image_size, image_threshold, ...
    with torch.no_grad():
        anomaly_map, pred_score, normalized_score = model(images)  # images (N, 3, S, S) in [0, 1], S = image_size

The model is traced, so Python-level choices are frozen at export time. Feed it images resized to the
``image_size`` it was trained and calibrated at: MONAI's EfficientNet uses static "same" padding computed
once when the network is built, so other sizes still run (and agree with the eager model for
``score="max"``), but the calibration statistics only hold at the training size, and with ``score="topk"``
the number of averaged pixels is fixed by the traced size.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from multiad_monai import __version__
from multiad_monai.networks.encoders import TEACHERS
from multiad_monai.networks.multiad import MultiAD, normalize_to_threshold

__all__ = ["ExportableMultiAD", "export_torchscript", "load_checkpoint", "export_metadata", "METADATA_FILE"]

METADATA_FILE = "multiad.json"
_CALIBRATION_BUFFERS = ("score_mean", "score_std", "pixel_mean", "pixel_std")


class ExportableMultiAD(nn.Module):
    """Inference-only snapshot of a calibrated :class:`MultiAD`: teacher, student and anomaly-map head.

    The sub-modules are copied and frozen (``requires_grad=False``, eval mode), so later training of
    ``network`` does not change this module and its outputs never require gradients. It is traceable
    with ``torch.jit.trace``; ``torch.jit.script`` fails on MONAI's ``MBConvBlock`` (optional SE
    attributes), so :func:`export_torchscript` traces.

    Args:
        network: a calibrated :class:`MultiAD` (see :meth:`MultiAD.calibrate`).

    Raises:
        ValueError: when ``network`` is not calibrated.
    """

    def __init__(self, network: MultiAD) -> None:
        super().__init__()
        if not network.is_calibrated:
            raise ValueError(
                "the network is not calibrated: run MultiAD.calibrate (or CalibrationHandler) on normal images "
                "after training, or load the final checkpoint written after calibration"
            )
        self.teacher = copy.deepcopy(network.teacher)
        self.student = copy.deepcopy(network.student)
        self.anomaly_map = copy.deepcopy(network.anomaly_map)
        self.register_buffer("score_mean", network.score_mean.detach().clone())
        self.register_buffer("score_std", network.score_std.detach().clone())
        self.threshold_sigmas = float(network.threshold_sigmas)
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
        anomaly_map, score = self.anomaly_map(self.teacher(images), self.student(images), images.shape[-2:])
        normalized = normalize_to_threshold(score, self.score_mean, self.score_std, self.threshold_sigmas)
        return anomaly_map, score, normalized


def export_metadata(network: MultiAD, image_size: int) -> dict:
    """What a consumer of the exported file needs to know, as plain JSON types.

    Args:
        network: the calibrated :class:`MultiAD` being exported.
        image_size: side of the square images it was trained and calibrated on.
    """
    head = network.anomaly_map
    sigma = float(head.smooth.sigma[0]) if hasattr(head.smooth, "sigma") else 0.0
    return {
        "format": "multiad-torchscript",
        "format_version": 1,
        "multiad_monai_version": __version__,
        "torch_version": torch.__version__,
        "image_size": int(image_size),
        "input": f"float32 (N, 3, {image_size}, {image_size}) RGB in [0, 1]",
        "outputs": ["anomaly_map (N, 1, H, W)", "pred_score (N,)", "normalized_score (N,)"],
        "teacher": network.teacher_name,
        "layers": list(network.teacher.layers),
        "fusion": head.fusion,
        "sigma": sigma,
        "score": head.score,
        "topk_ratio": head.topk_ratio,
        "threshold_sigmas": float(network.threshold_sigmas),
        "image_threshold": float(network.image_threshold),
        "pixel_threshold": float(network.pixel_threshold),
        "normalized_threshold": 0.5,
        **{name: float(getattr(network, name)) for name in _CALIBRATION_BUFFERS},
    }


def export_torchscript(
    network: MultiAD, path: str, image_size: int, device: str | torch.device = "cpu", check_trace: bool = True
) -> None:
    """Trace a calibrated network and save it, with its metadata, as a TorchScript file.

    The file is written through a temporary file and a rename, so ``path`` is either the complete new
    file or untouched. Trace on CPU for a portable file: constants made while tracing (the Gaussian
    kernel) live on the tracing device.

    Args:
        network: a calibrated :class:`MultiAD`; it is not modified.
        path: output file, e.g. ``model.ts``; its folder is created if needed.
        image_size: side of the square training images; the trace input is ``(2, 3, image_size, image_size)``.
        device: where to trace.
        check_trace: let ``torch.jit.trace`` re-trace and compare outputs (slower, catches data-dependent code).

    Raises:
        ValueError: when the network is not calibrated or ``image_size`` is too small.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 (the deepest features have stride 32), got {image_size}")
    module = ExportableMultiAD(network).to(device)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, image_size, image_size, generator=generator).to(device)
    with warnings.catch_warnings():
        # MONAI's GaussianFilter builds its kernel from the (fixed) sigma in Python: a constant, as intended.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"monai\.networks\.layers")
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=check_trace)
    extra_files = {METADATA_FILE: json.dumps(export_metadata(network, image_size), indent=2)}
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        torch.jit.save(traced, tmp, _extra_files=extra_files)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _guess_teacher(keys: Sequence[str]) -> str | None:
    for name, spec in TEACHERS.items():
        if any(key.startswith(f"teacher.stages.{spec['stages'][0]}.") for key in keys):
            return name
    return None


def _summary(keys: Sequence[str], n: int = 4) -> str:
    """``"440 keys in student.stages.s0, teacher.stem, ..."``: where the keys are, not all of them."""
    groups = sorted({".".join(key.split(".")[: 3 if ".stages." in key else 2]) for key in keys})
    return f"{len(keys)} in " + ", ".join(groups[:n]) + (", ..." if len(groups) > n else "")


def load_checkpoint(ckpt_path: str, network: MultiAD) -> MultiAD:
    """Load a calibrated state dict into ``network``, checking it fits before touching the network.

    Accepts the plain state dict of the final model (``monai.handlers.CheckpointSaver`` with one object)
    and the per-epoch checkpoints holding several objects (the ``"network"`` entry is used).

    Args:
        ckpt_path: file written by ``torch.save(network.state_dict(), ckpt_path)`` or a CheckpointSaver.
        network: a :class:`MultiAD` built with the training hyper-parameters (teacher, layers, ...).

    Returns:
        ``network``, with the checkpoint's weights and calibration statistics.

    Raises:
        FileNotFoundError: when ``ckpt_path`` does not exist.
        ValueError: when the file is not a weights-only state dict, was saved from a differently built
            network (e.g. another teacher), or is not calibrated.
    """
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{ckpt_path} cannot be read as a weights-only state dict ({first_line}); save models with "
            "torch.save(network.state_dict(), path), never torch.save(network)"
        ) from e
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):
        state = state["network"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{ckpt_path} is not a MultiAD state dict (expected a dict of tensors)")

    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        guess = _guess_teacher(list(state))
        differences = (("missing keys:", missing), ("unexpected keys:", unexpected), ("other shapes:", reshaped))
        details = "; ".join(f"{label} {_summary(keys)}" for label, keys in differences if keys)
        if guess is not None and guess != network.teacher_name:
            origin = f"it seems to come from teacher {guess!r}; build MultiAD(teacher={guess!r}) (--teacher {guess})"
        else:
            origin = "build the network with the training layers and discriminator_channels"
        raise ValueError(f"{ckpt_path} does not fit MultiAD(teacher={network.teacher_name!r}): {origin} ({details})")
    uncalibrated = [name for name in _CALIBRATION_BUFFERS if not bool(torch.isfinite(state[name]).all())]
    if uncalibrated:
        raise ValueError(
            f"{ckpt_path} is not calibrated ({', '.join(uncalibrated)} are NaN): use the final model saved after "
            "calibration (the bundle's ckpt_path), or run MultiAD.calibrate on normal images and save again"
        )
    network.load_state_dict(state, strict=True)
    return network


def main(argv: Sequence[str] | None = None) -> str:
    """CLI entry point; returns (and prints) the path of the written TorchScript file."""
    parser = argparse.ArgumentParser(
        prog="python -m multiad_monai.export",
        description="Export a calibrated Multi-AD checkpoint to TorchScript (with multiad.json metadata).",
    )
    parser.add_argument("--ckpt_path", required=True, help="state dict of the trained, calibrated model")
    parser.add_argument("--output", required=True, help="TorchScript file to write, e.g. model.ts")
    parser.add_argument("--image_size", type=int, default=128, help="training image size (default: 128)")
    parser.add_argument("--teacher", default="efficientnet-lite0", choices=sorted(TEACHERS))
    parser.add_argument(
        "--teacher_weights",
        help="teacher weights file, needed only to build 'seresnet50' offline (the checkpoint replaces them)",
    )
    parser.add_argument("--layers", nargs="+", help="distilled stages, if not the teacher's default")
    parser.add_argument("--fusion", default="sum", choices=["sum", "product"])
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--score", default="max", choices=["max", "topk"])
    parser.add_argument("--topk_ratio", type=float, default=0.01)
    parser.add_argument("--threshold_sigmas", type=float, default=3.0)
    parser.add_argument("--discriminator_channels", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--device", default="cpu", help="tracing device; cpu gives a portable file")
    args = parser.parse_args(argv)
    try:  # bad arguments and files end with their message, not a traceback
        network = MultiAD(
            teacher=args.teacher,
            layers=args.layers,
            teacher_weights=args.teacher_weights,
            fusion=args.fusion,
            sigma=args.sigma,
            score=args.score,
            topk_ratio=args.topk_ratio,
            discriminator_channels=args.discriminator_channels,
            threshold_sigmas=args.threshold_sigmas,
        )  # RuntimeError: teacher weights unavailable
        load_checkpoint(args.ckpt_path, network)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        parser.exit(1, f"error: {e}\n")
    try:
        export_torchscript(network, args.output, args.image_size, device=args.device)
    except ValueError as e:
        parser.exit(1, f"error: {e}\n")
    print(os.path.abspath(args.output))
    return os.path.abspath(args.output)


if __name__ == "__main__":
    main()
