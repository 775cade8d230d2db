"""Where the training time of a bundle goes: one real ``training`` run with a timer on every phase.

    python benchmarks/profile_training.py --config_file bundles/brain/train.json \\
        --dataset_dir ../shared/data/lgg_dev --output_dir runs/profile --overwrite true

Arguments other than ``--config_file`` and ``--output`` are bundle overrides, as for ``monai.bundle run``. Phases:
teacher-feature caching (building the training dataset), data loading (``GET_BATCH``), teacher forward (a hook on
the teacher, zero when its features are cached), student forward, distillation + adversarial loss, student
backward + step, discriminator step, other per-iteration handlers (checkpoints, logging), calibration and the
final evaluation. Printed as a table and optionally written as JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from collections import defaultdict

from ignite.engine import Events
from monai.bundle import ConfigWorkflow

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from a checkout

from multiad_monai.utils import MultiADIterationEvents as Phase  # noqa: E402


class PhaseTimer:
    """Seconds spent between consecutive engine events, summed per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._mark = time.perf_counter()

    def lap(self, name: str | None) -> None:
        now = time.perf_counter()
        if name:
            self.seconds[name] += now - self._mark
        self._mark = now

    def on(self, engine, event, name: str | None) -> None:
        engine.add_event_handler(event, lambda _: self.lap(name))


def _literal(value: str):
    """``128`` -> 128, ``true`` -> True, ``[1, 2]`` -> [1, 2]; anything else stays a string (as ``monai.bundle``)."""
    try:
        return ast.literal_eval({"true": "True", "false": "False", "null": "None"}.get(value, value))
    except (ValueError, SyntaxError):
        return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--output", help="optional JSON file for the profile")
    args, rest = parser.parse_known_args()
    overrides = {k.lstrip("-"): _literal(v) for k, v in zip(rest[::2], rest[1::2])}

    start = time.perf_counter()
    workflow = ConfigWorkflow(config_file=args.config_file, workflow_type="train", **overrides)
    workflow.initialize()
    timer = PhaseTimer()
    get = workflow.parser.get_parsed_content
    network = get("saved_network")
    get("data")
    timer.seconds["load data"] = time.perf_counter() - start
    timer.lap(None)
    get("train_dataset")
    timer.lap("cache teacher features")
    trainer, evaluator = get("train#trainer"), get("validate#evaluator")

    # registered before the bundle's handlers: each lap closes the phase that ended at this event
    timer.on(trainer, Events.ITERATION_STARTED, "other (handlers, logging, checkpoints)")
    timer.on(trainer, Events.GET_BATCH_STARTED, "other (handlers, logging, checkpoints)")
    timer.on(trainer, Events.GET_BATCH_COMPLETED, "data loading")
    teacher_seconds, training = [], []  # teacher forwards during training only (not caching or calibration)
    trainer.add_event_handler(Events.STARTED, lambda _: training.append(True))
    trainer.add_event_handler(Events.COMPLETED, lambda _: training.clear())

    def clock(sign: float):
        def hook(*_) -> None:  # a hook returning a value would replace the module's input or output
            if training:
                teacher_seconds.append(sign * time.perf_counter())

        return hook

    network.teacher.register_forward_pre_hook(clock(-1.0))
    network.teacher.register_forward_hook(clock(1.0))
    timer.on(trainer, Phase.STUDENT_FORWARD_COMPLETED, "teacher + student forward")
    timer.on(trainer, Phase.STUDENT_LOSS_COMPLETED, "losses")
    timer.on(trainer, Phase.STUDENT_BACKWARD_COMPLETED, "student backward + step")
    timer.on(trainer, Phase.DISCRIMINATOR_BACKWARD_COMPLETED, "discriminator forward + backward + step")
    timer.on(trainer, Events.EPOCH_COMPLETED, "other (handlers, logging, checkpoints)")
    timer.on(trainer, Events.COMPLETED, None)
    evaluator.add_event_handler(Events.STARTED, lambda _: timer.lap("calibration, final checkpoint"))
    evaluator.add_event_handler(Events.COMPLETED, lambda _: timer.lap("evaluation"))

    workflow.run()
    total = time.perf_counter() - start
    in_training = sum(teacher_seconds)  # pairs of -start, +end
    seconds = dict(timer.seconds)
    seconds["teacher + student forward"] -= in_training
    seconds = {"teacher forward (training)": in_training, **seconds}
    profile = {
        "phases_s": {k: round(v, 2) for k, v in seconds.items()},
        "total_s": round(total, 1),
        "iterations": trainer.state.iteration,
        "s_per_iteration": round(
            sum(v for k, v in seconds.items() if k not in NOT_ITERATION) / trainer.state.iteration, 3
        ),
        "metrics": {k: round(float(v), 4) for k, v in evaluator.state.metrics.items()},
    }
    print(f"{'phase':<45}{'seconds':>9}{'share':>8}")
    for name, value in seconds.items():
        print(f"{name:<45}{value:>9.1f}{value / total:>8.1%}")
    print(json.dumps(profile, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(profile, f, indent=2)


NOT_ITERATION = ("load data", "cache teacher features", "calibration, final checkpoint", "evaluation")

if __name__ == "__main__":
    main()
