"""Speed and memory of Multi-AD on random (seeded) images: training and inference throughput, latency, peak memory.

Training runs real ``MultiADTrainer`` iterations (student step, and discriminator step with
``--adversarial_weight`` > 0) on a DataLoader of random images; inference is the eval forward (anomaly map +
score). Warm-up iterations are not timed.

    python benchmarks/benchmark.py --teacher efficientnet-lite0 --image_size 256 --batch_size 16 --device cpu
    python benchmarks/benchmark.py --image_size 256 --batch_size 32 --device cuda --amp --channels_last \\
        --output results.json
    python benchmarks/benchmark.py --teacher seresnet50 --teacher_weights seresnet50.pt --device cuda

Peak memory is the process's peak RSS on CPU (a high-water mark since start-up, so inference is measured
first and the training figure includes everything before it) and ``torch.cuda.max_memory_allocated``
(reset before each phase) on CUDA. Numbers from a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from ignite.engine import Events
from monai.data import DataLoader

from multiad_monai.engines import MultiADTrainer
from multiad_monai.networks import TEACHERS, MultiAD
from multiad_monai.recipe import Recipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)  # Linux reports KiB


def _timed(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=generator)


def benchmark_inference(network: MultiAD, args: argparse.Namespace, device: torch.device) -> dict:
    """Eval forward: throughput at ``batch_size`` and per-image latency at batch 1.

    Returns:
        ``inference_images_per_s``, ``latency_ms_median``, ``latency_ms_p90`` and ``inference_peak_memory_mb``.
    """
    generator = torch.Generator().manual_seed(args.seed)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    batch = _images(args.batch_size, args.image_size, generator).to(device, memory_format=memory_format)
    single = _images(1, args.image_size, generator).to(device, memory_format=memory_format)
    autocast = torch.autocast(device.type) if args.amp else nullcontext()
    network.eval()
    _reset_peak(device)
    with torch.inference_mode(), autocast:
        batch_times = _timed(lambda: network(batch), device, args.warmup, args.iters)
        single_times = sorted(_timed(lambda: network(single), device, args.warmup, args.iters))
    return {
        "inference_images_per_s": round(args.batch_size * len(batch_times) / sum(batch_times), 2),
        "latency_ms_median": round(1000 * statistics.median(single_times), 2),
        "latency_ms_p90": round(1000 * single_times[min(len(single_times) - 1, int(0.9 * len(single_times)))], 2),
        "inference_peak_memory_mb": _peak_memory_mb(device),
    }


def benchmark_training(network: MultiAD, args: argparse.Namespace, device: torch.device) -> dict:
    """``warmup + iters`` iterations of a real :class:`MultiADTrainer`; only the last ``iters`` are timed.

    Returns:
        ``train_images_per_s``, ``train_ms_per_iteration`` and ``train_peak_memory_mb``.
    """
    generator = torch.Generator().manual_seed(args.seed + 1)
    # Two batches of distinct images, cycled by ignite until epoch_length iterations are done.
    data = [{"image": image} for image in _images(2 * args.batch_size, args.image_size, generator)]
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=0)
    to_kwargs = {"memory_format": torch.channels_last} if args.channels_last else {}
    trainer = MultiADTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.student.parameters(), 1e-3, betas=(0.5, 0.999)),
        discriminator_optimizer=torch.optim.Adam(network.discriminator.parameters(), 2e-4, betas=(0.5, 0.999)),
        adversarial_weight=args.adversarial_weight,
        epoch_length=args.warmup + args.iters,
        amp=args.amp,
        to_kwargs=to_kwargs,
    )
    times: list[float] = []
    starts: list[float] = []

    def start(engine: MultiADTrainer) -> None:
        _sync(device)
        starts.append(time.perf_counter())

    def stop(engine: MultiADTrainer) -> None:
        _sync(device)
        times.append(time.perf_counter() - starts[-1])

    trainer.add_event_handler(Events.ITERATION_STARTED, start)  # after the batch is fetched
    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop)
    _reset_peak(device)
    trainer.run()
    timed = times[args.warmup :]
    return {
        "train_images_per_s": round(args.batch_size * len(timed) / sum(timed), 2),
        "train_ms_per_iteration": round(1000 * statistics.median(timed), 1),
        "train_peak_memory_mb": _peak_memory_mb(device),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet-lite0", choices=sorted(TEACHERS))
    parser.add_argument("--teacher_weights", help="local teacher weights (needed for seresnet50 offline)")
    parser.add_argument("--allow_download", action="store_true", help="let MONAI download seresnet50 weights")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before each measurement")
    parser.add_argument(
        "--adversarial_weight", type=float, default=0.0, help="0 (the bundles' default): no discriminator"
    )
    parser.add_argument("--amp", action="store_true", help="torch.autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--channels_last", action="store_true", help="channels_last model and inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the JSON result to this file")
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 0 or args.batch_size < 1 or args.image_size < 32:
        parser.error("need --iters >= 1, --warmup >= 0, --batch_size >= 1 and --image_size >= 32")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device} requested but CUDA is not available; use --device cpu")

    torch.manual_seed(args.seed)
    network = MultiAD(
        Recipe.paper(teacher=args.teacher, image_size=args.image_size),
        teacher_weights=args.teacher_weights,
        allow_download=args.allow_download,
    )
    network = network.to(device)
    if args.channels_last:
        network = network.to(memory_format=torch.channels_last)
    result = {
        "teacher": args.teacher,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "device": str(device),
        "device_name": _device_name(device),
        "num_threads": torch.get_num_threads(),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "iters": args.iters,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
    }
    result.update(benchmark_inference(network, args, device))  # first: CPU peak RSS only ever grows
    result.update(benchmark_training(network, args, device))
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
