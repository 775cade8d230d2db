"""Concurrent ``/infer`` requests on one volume against the real MONAI Label server (127.0.0.1 only).

Starts ``python -m monailabel.main start_server --app apps/multiad`` over a temporary studies folder holding one
seeded synthetic volume, sends ``--requests`` simultaneous ``POST /infer/<model>?image=volume&output=image``,
and reports whether all were answered, their latency (p50 / p95 / max), how fast ``GET /info/`` answered
meanwhile, and the server's memory (RSS of its process) before, at the peak during and after the load. The
server is stopped by its PID at the end.

    python benchmarks/monailabel_load.py --ckpt_path bundles/brain/outputs/model.pt --requests 20 \\
        --shape 96 96 64 --output load.json

``rss_retained_mb`` is what the server kept of the burst (after minus before); the infer task hands freed heap
pages back (``malloc_trim``) when its last concurrent request ends. Measured on 2 shared CPUs, 20 requests on a
96x96x64 volume with a 32 px model: before 773 / peak 902 / after 865 MB (92 MB kept) without it, 749 / 910 /
789 MB (40 MB kept) with it.

Numbers from a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_volume(path: str, shape: tuple[int, int, int], seed: int = 0) -> None:
    """Stripes and noise, with a bright cube in the middle: a stand-in for a scan with a lesion."""
    rng = np.random.default_rng(seed)
    stripes = 0.5 + 0.25 * np.sin(2 * np.pi * np.arange(shape[1]) / 8)
    data = (stripes[None, :, None] + rng.normal(0, 0.05, shape)).clip(0, 1) * 100
    centre = [s // 2 for s in shape]
    data[tuple(slice(c - s // 8, c + s // 8) for c, s in zip(centre, shape))] = 140
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0])), path)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class PeakRSS:
    """Sample a process's RSS every ``interval`` seconds in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/monailabel_load.py", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a trained checkpoint (served as --model)")
    parser.add_argument("--model", default="brain", help="bundle name the checkpoint is served as")
    parser.add_argument("--requests", type=int, default=20, help="simultaneous /infer requests")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="synthetic volume shape")
    parser.add_argument("--infer_concurrency", type=int, default=1, help="the app's --conf infer_concurrency")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", help="write the summary JSON here too")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="monailabel-load-")
    app, studies = os.path.join(work, "app"), os.path.join(work, "studies")
    shutil.copytree(os.path.join(ROOT, "apps", "multiad"), app, ignore=shutil.ignore_patterns("model", "logs", "lib"))
    os.makedirs(studies)
    write_volume(os.path.join(studies, "volume.nii.gz"), tuple(args.shape))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": ROOT, "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    command = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", app, "--studies", studies,
        "--conf", "models", args.model, "--conf", f"{args.model}_ckpt_path", os.path.abspath(args.ckpt_path),
        "--conf", "device", args.device, "--conf", "infer_concurrency", str(args.infer_concurrency),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = open(os.path.join(work, "server.log"), "w", encoding="utf-8")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                if requests.get(url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(1)
        infer = f"{url}/infer/{args.model}?image=volume&output=image"
        requests.post(infer, timeout=600).raise_for_status()  # loads the model
        singles = []
        for _ in range(3):  # one request at a time
            start = time.time()
            requests.post(infer, timeout=600).raise_for_status()
            singles.append(time.time() - start)
        rss_before = psutil.Process(server.pid).memory_info().rss

        def one(_: int) -> tuple[int, float]:
            start = time.time()
            response = requests.post(infer, timeout=1800)
            return response.status_code, time.time() - start

        info_latencies = []
        with PeakRSS(server.pid) as rss, ThreadPoolExecutor(args.requests) as pool:
            start = time.time()
            futures = [pool.submit(one, i) for i in range(args.requests)]
            while not all(f.done() for f in futures):
                t = time.time()
                requests.get(url + "/info/", timeout=600)
                info_latencies.append(time.time() - t)
                time.sleep(0.5)
            results = [f.result() for f in futures]
            wall = time.time() - start
        time.sleep(2)
        rss_after = psutil.Process(server.pid).memory_info().rss
        latencies = [latency for _, latency in results]
        summary = {
            "requests": args.requests,
            "answered_200": sum(code == 200 for code, _ in results),
            "statuses": sorted({code for code, _ in results}),
            "volume_shape": args.shape,
            "infer_concurrency": args.infer_concurrency,
            "single_request_median_s": round(statistics.median(singles), 2),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(percentile(latencies, 95), 2),
            "latency_max_s": round(max(latencies), 2),
            "wall_s": round(wall, 2),
            "info_during_load_max_s": round(max(info_latencies, default=0.0), 3),
            "rss_before_mb": round(rss_before / 2**20),
            "rss_peak_mb": round(rss.peak / 2**20),
            "rss_after_mb": round(rss_after / 2**20),
            "rss_retained_mb": round((rss_after - rss_before) / 2**20),
            "cpus": os.cpu_count(),
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
