"""Start and stop the real MONAI Label server with the TokenSeg app on 127.0.0.1, and wait for its training.

Used by the tests and by the annotation-loop benchmark (``benchmarks/annotation_loop.py``)::

    with MonaiLabelServer(studies, model_dir, log, conf={"labels": '{"lesion": 1}'}) as server:
        client = client_for(server, tmp)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from monailabel.client import MONAILabelClient

from tools.orthanc import stop_process_group

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class MonaiLabelServer:
    """``python -m monailabel.main start_server`` in its own process group; stopped (and its port freed) on exit."""

    def __init__(self, studies: Path | str, model_dir: Path, log: Path, epochs: int = 1, val_split: float = 0.5,
                 env: dict[str, str] | None = None, conf: dict[str, str] | None = None, models: str = "tokenseg"):
        """``studies``: a folder, or a DICOMweb URL; ``env``: extra environment variables for the server;
        ``conf``: further ``--conf`` options of the app; ``models``: the app's ``--conf models``."""
        self.studies, self.model_dir, self.log, self.env, self.models = studies, model_dir, log, env or {}, models
        self.conf = conf or {}
        self.epochs, self.val_split = epochs, val_split
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> MonaiLabelServer:
        cmd = [
            sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP), "--studies", str(self.studies),
            "--conf", "models", self.models, "--conf", "model_dir", str(self.model_dir),
            "--conf", "epochs", str(self.epochs), "--conf", "val_split", str(self.val_split),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]
        for name, value in self.conf.items():
            cmd += ["--conf", name, value]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()[-5000:]}")
                try:
                    with urllib.request.urlopen(f"{self.url}/info/", timeout=5) as response:
                        if response.status == 200:
                            return self
                except OSError:
                    time.sleep(1)
            raise TimeoutError(f"server did not answer within {timeout} s:\n{self.log.read_text()[-5000:]}")
        except BaseException:  # a timeout, or the caller stopped while waiting: no server left behind
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process_group(self.process)
        # the server's background tasks (training, scoring) share its process group: make sure they are gone too
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        deadline = time.time() + 20
        while not port_is_free(self.port) and time.time() < deadline:
            time.sleep(0.5)

    def __enter__(self) -> MonaiLabelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def client_for(server: MonaiLabelServer, tmp_path: Path) -> MONAILabelClient:
    """MONAI Label's Python client, with its own temp folder (the server shares this machine)."""
    tmpdir = tmp_path / "client"
    tmpdir.mkdir(exist_ok=True)
    return MONAILabelClient(server.url, tmpdir=str(tmpdir))


def wait_for_training(client, timeout: float = 900) -> dict:
    """Poll MONAI Label's ``/train/`` status until the task has ended; its last status."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.train_status()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(3)
    raise TimeoutError(f"training did not finish: {client.train_status()}")
