"""Reading Multi-AD checkpoints: weights, calibration and the recipe, checked before anything is built.

A final checkpoint is the model's plain state dict (``torch.load(..., weights_only=True)`` reads it); per-epoch
training checkpoints hold it under ``"network"``. Besides weights and calibration buffers it holds the model's
:class:`~multiad_monai.recipe.Recipe` (key ``_extra_state``), so :func:`load_model` rebuilds the network and its
preprocessing from the file alone. Checkpoints written before the recipe travelled are converted once with::

    python -m multiad_monai.checkpoint --ckpt_path old.pt --output new.pt --config_file bundles/brain/train.json \\
        [--image_size 256 ...the options it was trained with]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from multiad_monai.networks.encoders import TEACHERS
from multiad_monai.networks.multiad import MultiAD, legacy_keys
from multiad_monai.recipe import Recipe, check_given
from multiad_monai.utils import atomic_write, check_path
from multiad_monai.utils.finite import listing, nonfinite_tensors

__all__ = [
    "CALIBRATION_BUFFERS",
    "checkpoint_sha256",
    "load_checkpoint",
    "load_model",
    "read_recipe",
    "read_state",
    "upgrade",
]

CALIBRATION_BUFFERS = ("score_mean", "score_std", "pixel_mean", "pixel_std")
RECIPE_KEY = "_extra_state"
_UPGRADE = (
    "python -m multiad_monai.checkpoint --ckpt_path {path} --output NEW.pt "
    "--config_file bundles/<domain>/train.json [--image_size N ... the options it was trained with]"
)


def checkpoint_sha256(ckpt_path: str) -> str:
    """The SHA-256 of a checkpoint file (hex): which weights produced a result."""
    digest = hashlib.sha256()
    with open(ckpt_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state(ckpt_path: str) -> dict[str, Any]:
    """The model state dict of a final or per-epoch checkpoint, read weights-only.

    Raises:
        FileNotFoundError: when ``ckpt_path`` does not exist.
        ValueError: when the file is not a weights-only Multi-AD state dict.
    """
    if not ckpt_path:
        raise ValueError("ckpt_path is required (--ckpt_path PATH): the training bundle writes <output_dir>/model.pt")
    check_path(ckpt_path, "ckpt_path")
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{ckpt_path} cannot be read as a weights-only state dict ({first_line}); it is truncated, corrupt, "
            "or a pickled module (save models with torch.save(network.state_dict(), path))"
        ) from e
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):
        state = state["network"]
    tensors_or_recipe = (
        isinstance(state, Mapping)
        and bool(state)
        and all(isinstance(v, torch.Tensor) or k == RECIPE_KEY for k, v in state.items())
    )
    if not tensors_or_recipe:
        raise ValueError(f"{ckpt_path} is not a MultiAD state dict (expected a dict of tensors)")
    return legacy_keys(state)  # checkpoints from before the head split load unchanged


def _recipe_of(state: Mapping[str, Any], ckpt_path: str) -> Recipe:
    extra = state.get(RECIPE_KEY)
    if not isinstance(extra, Mapping) or not isinstance(extra.get("recipe"), Mapping):
        raise ValueError(
            f"{ckpt_path} was written before checkpoints carried their recipe (preprocessing and head settings), "
            f"so it cannot be used safely. Convert it once with: {_UPGRADE.format(path=ckpt_path)}"
        )
    return Recipe.from_dict(extra["recipe"], ckpt_path)


def read_recipe(ckpt_path: str, require_calibrated: bool = False, **given: Any) -> Recipe:
    """The recipe stored in ``ckpt_path``, checked against values a user gave (None = not given).

    Raises:
        ValueError: for an unreadable, pre-recipe or (with ``require_calibrated``) uncalibrated checkpoint, or a
            given value that contradicts it.
    """
    state = read_state(ckpt_path)
    recipe = check_given(_recipe_of(state, ckpt_path), given, ckpt_path)
    _check_finite(state, ckpt_path, require_calibrated)
    return recipe


def _check_finite(state: Mapping[str, Any], ckpt_path: str, require_calibrated: bool) -> None:
    """Weights and batch-norm statistics are always finite; the head's buffers once calibrated."""
    trained = nonfinite_tensors(state, ("student.", "teacher.", "discriminator."))
    if trained:
        raise ValueError(
            f"{ckpt_path} holds non-finite values in {listing(trained)}: the model diverged in training and cannot "
            "be used; retrain it with a lower --learning_rate"
        )
    if require_calibrated:
        _check_calibrated(state, ckpt_path)
        head = nonfinite_tensors(state)
        if head:
            raise ValueError(
                f"{ckpt_path} holds non-finite calibration values in {listing(head)}: recalibrate it (run "
                "multiad_monai.calibration.calibrate on normal images and save again) or retrain it"
            )


def _check_calibrated(state: Mapping[str, Any], ckpt_path: str) -> None:
    uncalibrated = [name for name in CALIBRATION_BUFFERS if bool(torch.isnan(state[f"normalizer.{name}"]).any())]
    if uncalibrated:
        raise ValueError(
            f"{ckpt_path} is not calibrated ({', '.join(uncalibrated)} are NaN): use the final model saved after "
            "calibration (the bundle's ckpt_path), or run multiad_monai.calibration.calibrate on normal images and "
            "save again"
        )


def _guess_teacher(keys: Sequence[str]) -> str | None:
    for name, spec in TEACHERS.items():
        if any(key.startswith(f"teacher.stages.{spec['stages'][0]}.") for key in keys):
            return name
    return None


def _summary(keys: Sequence[str], n: int = 4) -> str:
    """``"440 keys in student.stages.s0, teacher.stem, ..."``: where the keys are, not all of them."""
    groups = sorted({".".join(key.split(".")[: 3 if ".stages." in key else 2]) for key in keys})
    return f"{len(keys)} in " + ", ".join(groups[:n]) + (", ..." if len(groups) > n else "")


def _fixed_shape(key: str, tensor: torch.Tensor) -> tuple[int, ...]:
    """The shape a network fixes: the prior's bank holds as many images as calibration kept."""
    return tuple(tensor.shape[1:] if key.startswith("prior.bank") else tensor.shape)


def _check_fits(state: Mapping[str, Any], network: MultiAD, ckpt_path: str, require_calibrated: bool) -> None:
    expected = network.state_dict()
    tensors = [k for k in expected if k != RECIPE_KEY]
    missing = [k for k in tensors if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in tensors if k in state and _fixed_shape(k, state[k]) != _fixed_shape(k, expected[k])]
    if missing or unexpected or reshaped:
        guess = _guess_teacher(list(state))
        differences = (("missing keys:", missing), ("unexpected keys:", unexpected), ("other shapes:", reshaped))
        details = "; ".join(f"{label} {_summary(keys)}" for label, keys in differences if keys)
        if guess is not None and guess != network.teacher_name:
            origin = f"it seems to come from teacher {guess!r}; build MultiAD(teacher={guess!r}) (--teacher {guess})"
        else:
            origin = "build the network with the training layers and discriminator_channels"
        raise ValueError(f"{ckpt_path} does not fit MultiAD(teacher={network.teacher_name!r}): {origin} ({details})")
    _check_finite(state, ckpt_path, require_calibrated)


def load_checkpoint(ckpt_path: str, network: MultiAD, require_calibrated: bool = True) -> MultiAD:
    """Load ``ckpt_path`` into an existing ``network``, checking that it fits before touching the network.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_state`; also for a checkpoint of another topology or
            recipe, a pre-recipe checkpoint, or (with ``require_calibrated``) an uncalibrated one.
    """
    state = read_state(ckpt_path)
    stored = _recipe_of(state, ckpt_path)
    _check_fits(state, network, ckpt_path, require_calibrated)
    differences = network.recipe.differences(stored)
    if differences:
        details = "; ".join(f"{key}: network {a!r}, checkpoint {b!r}" for key, (a, b) in differences.items())
        raise ValueError(f"{ckpt_path} was trained with another recipe ({details}); use load_model({ckpt_path!r})")
    network.load_state_dict(state, strict=True)
    return network


def load_model(
    ckpt_path: str,
    device: str | torch.device = "cpu",
    require_calibrated: bool = True,
    **given: Any,
) -> MultiAD:
    """Rebuild a trained :class:`MultiAD` (topology, head, preprocessing recipe, calibration) from its checkpoint.

    The teacher's weights come from the checkpoint (the load is strict), so no ImageNet file is needed.

    Args:
        ckpt_path: final (or per-epoch) checkpoint.
        device: where to put the model.
        require_calibrated: refuse checkpoints written before calibration.
        given: recipe values a user gave (None = take the checkpoint's); a contradiction is an error.

    Returns:
        the model in eval mode; ``model.recipe`` is the checkpoint's recipe.
    """
    recipe = read_recipe(ckpt_path, **given)
    network = MultiAD(recipe, pretrained_teacher=False)
    load_checkpoint(ckpt_path, network, require_calibrated=require_calibrated)
    return network.to(device).eval()


def upgrade(ckpt_path: str, output: str, recipe: Recipe) -> str:
    """Write ``ckpt_path`` (saved before checkpoints carried their recipe) to ``output`` with ``recipe`` inside.

    Raises:
        ValueError: when the checkpoint already has a recipe, or its calibration size differs from the recipe's.
    """
    state = read_state(ckpt_path)
    if RECIPE_KEY in state:
        raise ValueError(f"{ckpt_path} already carries its recipe; nothing to convert")
    input_size = state.pop("input_size", None)
    if input_size is not None and input_size.any() and tuple(input_size.tolist()) != recipe.image_size:
        raise ValueError(
            f"{ckpt_path} was calibrated at image_size {tuple(input_size.tolist())}, the recipe says "
            f"{recipe.image_size}: pass --image_size {int(input_size[0])}"
        )
    # checkpoints without a recipe predate the teacher prior and the SE switch: their map is the student's alone
    recipe = recipe.replace(prior_weight=0.0, student_se=True)
    network = MultiAD(recipe, pretrained_teacher=False)
    state[RECIPE_KEY] = network.get_extra_state()
    _check_fits(state, network, ckpt_path, require_calibrated=True)
    network.load_state_dict(state, strict=True)
    atomic_write(output, lambda tmp: torch.save(network.state_dict(), tmp))
    return output


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["--image_size", "256", "--intensity", "hu"]`` -> ``{"image_size": 256, "intensity": "hu"}``."""
    if len(pairs) % 2 or not all(key.startswith("--") for key in pairs[::2]):
        raise ValueError(f"expected --key value pairs, got {' '.join(pairs)}")
    result = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        try:
            result[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            result[key[2:]] = value
    return result


def main(argv: Sequence[str] | None = None) -> str:
    """CLI: convert a pre-recipe checkpoint, taking the recipe from the bundle config it was trained with."""
    from monai.bundle import ConfigParser

    parser = argparse.ArgumentParser(
        prog="python -m multiad_monai.checkpoint",
        description="Store the recipe (from the training bundle config and options) in an older checkpoint.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written before the recipe travelled")
    parser.add_argument("--output", required=True, help="file to write (may equal --ckpt_path)")
    parser.add_argument("--config_file", required=True, help="the bundle's train.json it was trained with")
    args, rest = parser.parse_known_args(argv)
    try:
        config = ConfigParser()
        config.read_config(args.config_file)
        # pre-recipe checkpoints have no teacher prior (upgrade sets 0) and a square input: the data-driven
        # defaults of both would read the data folder, which upgrading does not need. They also predate the
        # standardized fusion (no scale statistics) and the sigma that follows image_size (then 4)
        pre_recipe = {"prior_weight": 0.0, "keep_aspect": False, "data_root": None, "fusion": "sum", "sigma": 4.0}
        config.update({**pre_recipe, **_overrides(rest)})
        recipe = config.get_parsed_content("recipe")
        upgrade(args.ckpt_path, args.output, recipe)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    print(os.path.abspath(args.output))
    return os.path.abspath(args.output)


if __name__ == "__main__":
    main()
