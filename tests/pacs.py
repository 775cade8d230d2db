"""A real Orthanc PACS for the tests: started on 127.0.0.1 with a temporary storage and configuration, stopped
by its PID; series go in over STOW-RS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

import requests

ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """One Orthanc process; ``stop`` and ``start`` again keep its storage (nothing stored is lost)."""

    folder: str
    http_port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 60) -> Orthanc:
        config = {
            "Name": "multiad-test",
            "StorageDirectory": os.path.join(self.folder, "storage"),
            "IndexDirectory": os.path.join(self.folder, "storage"),
            "HttpPort": self.http_port,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,  # answers 127.0.0.1 only
            "AuthenticationEnabled": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = os.path.join(self.folder, "orthanc.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        log = open(os.path.join(self.folder, "orthanc.log"), "a", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen([ORTHANC, path], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: see {log.name}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: see {log.name}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def store(self, files: list[str]) -> None:
        """STOW-RS, as a modality or another PACS sends series."""
        from pydicom import dcmread

        self.store_datasets([dcmread(f) for f in files])

    def store_datasets(self, datasets: list) -> None:
        from dicomweb_client import DICOMwebClient

        DICOMwebClient(self.dicomweb).store_instances(datasets)

    def series(self, **filters) -> list[dict]:
        """QIDO-RS series search."""
        return requests.get(f"{self.dicomweb}/series", params=filters, timeout=30).json() or []
