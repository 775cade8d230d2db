"""Every use of a private or undocumented attribute of MONAI, ignite, MONAI's MLflow handler and torch.

Each function names what it reaches for, so the rest of the package calls no ``obj._name`` of a third-party
object. An attribute that an upgrade removed raises ``AttributeError`` naming the package, its version and this
module (rather than being set silently on a new attribute that nothing reads), and ``tests/test_upstream.py``
checks each function against the installed versions, behaviour included.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ignite.metrics import EpochMetric
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from monai.handlers import CheckpointSaver, MLFlowHandler
    from monai.networks.nets import EfficientNet

__all__ = [
    "efficientnet_parts",
    "set_relu6",
    "enable_atomic_save",
    "mlflow_run_and_client",
    "epoch_metric_outputs",
    "module_with_children",
    "add_exception_handler_to_running_app",
]


def _version(package: str) -> str:
    return f"{package} {getattr(importlib.import_module(package), '__version__', '(unknown version)')}"


def _get(obj: Any, name: str, package: str) -> Any:
    """``getattr(obj, name)``, or an ``AttributeError`` naming the upstream version and this adapter."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise AttributeError(
            f"{type(obj).__qualname__} has no attribute {name!r} in {_version(package)}: "
            "multiad_monai.upstream needs updating for this version"
        ) from None


def _set(obj: Any, name: str, value: Any, package: str) -> None:
    """``setattr(obj, name, value)`` on an attribute that must already exist (never a new, unread one)."""
    _get(obj, name, package)
    setattr(obj, name, value)


def efficientnet_parts(net: EfficientNet) -> tuple[nn.Sequential, list[nn.Module]]:
    """The stem and the stages of a ``monai.networks.nets.EfficientNet``, in forward order.

    Args:
        net: the network; its head (``_conv_head``, pooling, classifier) is left out.

    Returns:
        ``stem`` (same padding, conv, norm, activation: ``(N, C, H, W)`` -> ``(N, 32, H/2, W/2)``) and the
        list of stages (one ``nn.Sequential`` of MBConv blocks per entry of the block list).
    """
    modules = [_get(net, name, "monai") for name in ("_conv_stem_padding", "_conv_stem", "_bn0", "_swish")]
    return nn.Sequential(*modules), list(_get(net, "_blocks", "monai"))


def set_relu6(net: EfficientNet) -> EfficientNet:
    """Replace swish by ``ReLU6`` in the stem, the head and every MBConv block (EfficientNet-Lite); returns ``net``.

    MONAI's ``EfficientNet.set_swish`` only chooses between two swish variants.
    """
    _set(net, "_swish", nn.ReLU6(inplace=True), "monai")
    for stage in _get(net, "_blocks", "monai"):
        for block in stage:
            _set(block, "_swish", nn.ReLU6(inplace=True), "monai")
    return net


def enable_atomic_save(saver: CheckpointSaver) -> CheckpointSaver:
    """Turn ignite's write-to-a-temporary-file-then-rename back on for every checkpoint of a MONAI saver.

    MONAI creates its ``DiskSaver`` with ``atomic=False``; a run killed while saving would otherwise leave a
    truncated checkpoint that a resume then fails to read. Returns ``saver``.
    """
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        checkpoint = _get(saver, name, "monai")
        if checkpoint is not None:
            _set(checkpoint.save_handler, "_atomic", True, "ignite")
    return saver


def mlflow_run_and_client(handler: MLFlowHandler | None) -> tuple[Run, MlflowClient] | None:
    """The active run of a ``monai.handlers.MLFlowHandler`` and the client logging to it.

    Returns:
        ``(run, client)``, or None when ``handler`` is None or has no active run (before ``start`` or after
        ``close``). Log with ``client.log_artifact(run.info.run_id, path)``.
    """
    if handler is None:
        return None
    run = _get(handler, "cur_run", "monai")
    return None if run is None else (run, _get(handler, "client", "monai"))


def epoch_metric_outputs(metric: EpochMetric) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The predictions and targets an ``ignite.metrics.EpochMetric`` holds since its last ``reset``.

    Returns:
        two lists of this rank's per-batch tensors, ``(N_i,)`` or ``(N_i, K)``, not yet gathered across ranks.
    """
    return _get(metric, "_predictions", "ignite"), _get(metric, "_targets", "ignite")


def module_with_children(module: nn.Module, children: Mapping[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` sharing its parameters and buffers, with its direct children replaced.

    ``module`` itself is left unchanged; ``setattr`` on a shallow copy would change both, as they share one
    registry of children.

    Args:
        module: the original.
        children: the new child of each name; names not given keep their current child.

    Raises:
        KeyError: when ``children`` names a child ``module`` does not have.
    """
    current = _get(module, "_modules", "torch")
    unknown = sorted(set(children) - set(current))
    if unknown:
        raise KeyError(f"{type(module).__name__} has no children {unknown}; its children are {list(current)}")
    view = copy.copy(module)
    _set(view, "_modules", {name: children.get(name, child) for name, child in current.items()}, "torch")
    return view


def add_exception_handler_to_running_app(app: Any, exception: type[Exception], handler: Any) -> None:
    """``app.add_exception_handler`` on a Starlette app that already serves (MONAI Label installs an app's routes
    at start-up): Starlette copies the handlers into its middleware stack when it first builds it, so the stack
    is dropped and rebuilt, with the handler, on the next request."""
    app.add_exception_handler(exception, handler)
    _set(app, "middleware_stack", None, "starlette")
