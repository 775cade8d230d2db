"""Archive triage throughput: the same synthetic archive scored with 1, 2, ... processes.

Writes ``--studies`` seeded synthetic NIfTI volumes (stripes and noise, every other one with a bright cube) to
``<output_dir>/archive`` and, for each of ``--runs`` (N processes, or NxT: T threads each), runs from the
repository root the command a user runs::

    python -m monai.bundle run --config_file "['bundles/brain/inference.json','bundles/brain/multi_gpu_inference.json']"
        --ckpt_path M --input_path <output_dir>/archive --output_dir <output_dir>/np<N>
    # N > 1: torchrun --standalone --nproc_per_node=N -m monai.bundle run ... (the same arguments)

into a fresh output folder each time, and reports per N: wall time and studies/hour (process start to exit),
the scoring phase alone (first rank's start of scoring to the merge, from the log), the peak RSS of the largest
process (``/usr/bin/time -v``, which sees the workers torchrun waits for) and the peak total RSS of the process
tree (sampled), and whether the merged ``scores.csv`` equals the first run's (largest score difference). torchrun
gives each of N > 1 workers ``OMP_NUM_THREADS=1``; a plain process takes torch's default (one thread per core),
so ``1x1`` is the like-for-like single process.

    python benchmarks/triage.py --ckpt_path runs/brain64/model.pt --studies 20 --shape 128 128 48 --runs 1 1x1 2 \\
        --output_dir runs/triage_benchmark

Numbers from a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - multiad_monai\.archive_triage - INFO - (.*)$", re.M)


def write_archive(folder: str, studies: int, shape: tuple[int, int, int]) -> None:
    """``study000.nii.gz`` ...: stripes and noise, 1 mm x 1 mm x 2 mm; odd studies hold a bright cube."""
    os.makedirs(folder, exist_ok=True)
    for i in range(studies):
        path = os.path.join(folder, f"study{i:03d}.nii.gz")
        if os.path.exists(path):
            continue
        rng = np.random.default_rng(i)
        stripes = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(shape[1]) / 8)
        data = (stripes[None, :, None] + rng.normal(0, 0.05, shape)).clip(0, 1) * 100
        if i % 2:
            centre = [int(c) for c in rng.integers([s // 4 for s in shape], [3 * s // 4 for s in shape])]
            data[tuple(slice(c - s // 10, c + s // 10) for c, s in zip(centre, shape))] = 140
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), path)


class TreeRSS:
    """Sample the summed RSS of a process and all its descendants every ``interval`` seconds; ``peak`` is the max."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def triage_command(nproc: int, bundle: str, ckpt_path: str, archive: str, out: str, extra: list[str]) -> list[str]:
    configs = f"['bundles/{bundle}/inference.json','bundles/{bundle}/multi_gpu_inference.json']"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [
        *(launcher if nproc > 1 else [sys.executable]), "-m", "monai.bundle", "run", "--config_file", configs,
        "--ckpt_path", ckpt_path, "--input_path", archive, "--output_dir", out, *extra,
    ]  # fmt: skip


def _scoring_seconds(log: str) -> float | None:
    """From the first rank's start of scoring (its ``rank k/N:`` line) to the merge (``studies ranked``)."""
    stamps = [(datetime.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f"), text) for t, text in STAMP.findall(log)]
    starts = [t for t, text in stamps if text.startswith("rank ")]
    ends = [t for t, text in stamps if " studies ranked in " in text]
    return (ends[-1] - starts[0]).total_seconds() if starts and ends else None


def torch_threads() -> int:
    """The intra-op threads a plain ``python`` process gets (``OMP_NUM_THREADS`` or torch's default)."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _scores(out: str) -> dict[str, float]:
    with open(os.path.join(out, "scores.csv"), encoding="utf-8") as f:
        return {row["image"]: float(row["score"]) for row in csv.DictReader(f)}


def parse_run(text: str) -> tuple[int, int | None]:
    """``"2"``: two processes with the launcher's threads; ``"1x1"``: one process with ``OMP_NUM_THREADS=1``."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected N or NxT (processes x threads), got {text!r}")
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


def run_once(nproc: int, threads: int | None, args: argparse.Namespace, archive: str) -> dict:
    name = f"np{nproc}" + (f"x{threads}" if threads else "")
    out = os.path.join(args.output_dir, name)
    shutil.rmtree(out, ignore_errors=True)
    command = triage_command(nproc, args.bundle, args.ckpt_path, archive, out, args.extra)
    timer = ["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    process = subprocess.Popen(
        timer + command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace",
    )  # fmt: skip
    with TreeRSS(process.pid) as tree:
        log, _ = process.communicate()
    wall = time.perf_counter() - start
    with open(os.path.join(args.output_dir, f"{name}.log"), "w", encoding="utf-8") as f:
        f.write(" ".join(command) + "\n" + log)
    if process.returncode:
        raise RuntimeError(f"{nproc} processes: exit {process.returncode}; see {f.name}:\n{log[-3000:]}")
    largest = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    scoring = _scoring_seconds(log)
    return {
        "processes": nproc,
        "threads_each": threads or (1 if nproc > 1 else torch_threads()),
        "studies": args.studies,
        "wall_s": round(wall, 1),
        "studies_per_hour": round(args.studies / wall * 3600),
        "scoring_s": round(scoring, 1) if scoring else None,
        "scoring_studies_per_hour": round(args.studies / scoring * 3600) if scoring else None,
        "peak_rss_largest_process_mb": round(int(largest.group(1)) / 1024) if largest else None,
        "peak_rss_all_processes_mb": round(tree.peak / 2**20),
        "scores": _scores(out),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python benchmarks/triage.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a trained checkpoint")
    parser.add_argument("--bundle", default="brain")
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 48], metavar=("X", "Y", "Z"))
    parser.add_argument(
        "--runs",
        type=parse_run,
        nargs="+",
        default=[(1, None), (2, None)],
        help="N (processes; torchrun gives each 1 thread when N > 1) or NxT (T threads each): e.g. 1 1x1 2",
    )
    parser.add_argument("--output_dir", required=True, help="archive, one output folder and log per count, results")
    parser.add_argument("extra", nargs="*", help="after --: more bundle arguments (e.g. --batch_size 32)")
    args = parser.parse_args(argv)
    args.ckpt_path = os.path.abspath(args.ckpt_path)
    args.output_dir = os.path.abspath(args.output_dir)
    archive = os.path.join(args.output_dir, "archive")
    write_archive(archive, args.studies, tuple(args.shape))
    results = [run_once(n, threads, args, archive) for n, threads in args.runs]
    reference = results[0].pop("scores")
    for result in results[1:]:
        scores = result.pop("scores")
        same = scores.keys() == reference.keys()
        result["max_score_difference"] = max(abs(scores[k] - reference[k]) for k in reference) if same else None
    header = list(results[0]) + (["max_score_difference"] if len(results) > 1 else [])
    print(f"archive: {args.studies} studies {'x'.join(map(str, args.shape))}, checkpoint {args.ckpt_path}")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for result in results:
        print("| " + " | ".join(str(result.get(k, "")) for k in header) + " |")
    with open(os.path.join(args.output_dir, "triage_benchmark.json"), "w", encoding="utf-8") as f:
        json.dump({"shape": args.shape, "ckpt_path": args.ckpt_path, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
