"""A private Orthanc DICOMweb server on 127.0.0.1, for the MONAI Label app, OHIF and the tests.

    python tools/orthanc.py serve --dir /tmp/orthanc --port 8042 [--upload-demo N]

starts Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) with its
own configuration, storage and index inside ``--dir``, its DICOM port off,
``RemoteAccessAllowed`` false and the DICOMweb plugin loaded, and serves it at
``http://127.0.0.1:PORT/dicom-web`` until Ctrl-C or SIGTERM. ``--upload-demo N``
converts the first N demo cases to DICOM and uploads them once it answers.

Orthanc 1.10 has no listen-address option: it binds every interface. So it
runs in a network namespace of its own (``unshare --net``, only a loopback
device inside) and this process forwards ``127.0.0.1:PORT`` of the host into
it: nothing but 127.0.0.1 is ever bound on the host. ``Orthanc`` is the
Python handle that tests use; it runs the command above in its own process
group and stops it cleanly.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

__all__ = ["Orthanc", "dicomweb_plugin", "orthanc_missing", "write_config"]

logger = logging.getLogger(__name__)

INNER_PORT = 8042  # Orthanc's port inside its private network namespace
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
CLONE_NEWNET = 0x40000000


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin installed by the Debian package ``orthanc-dicomweb`` (``dpkg -L orthanc-dicomweb``)."""
    for folder in PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")):
            return path
    return None


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (missing packages or tools), or None."""
    missing = [p for p, ok in (("orthanc", shutil.which("Orthanc")), ("orthanc-dicomweb", dicomweb_plugin())) if not ok]
    if missing:
        return f"Debian package(s) {', '.join(missing)} not installed (apt-get install -y {' '.join(missing)})"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare (util-linux) and ip (iproute2) are needed to keep Orthanc on 127.0.0.1"
    return None


def write_config(folder: Path) -> Path:
    """Orthanc's configuration, storage and index, all inside ``folder``."""
    plugin = dicomweb_plugin()
    if plugin is None:
        raise FileNotFoundError("the Orthanc DICOMweb plugin is not installed (apt-get install -y orthanc-dicomweb).")
    config = {
        "Name": "TokenSeg",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "Plugins": [str(plugin)],
        "HttpPort": INNER_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "WebDavEnabled": False,
        "OrthancExplorerEnabled": False,
        "OverwriteInstances": False,  # a re-sent instance never replaces the stored one
        "HttpCompressionEnabled": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False, "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _net_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, target):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _forward(client: socket.socket) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", INNER_PORT), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)
    client.close()
    upstream.close()


def serve(folder: Path, port: int) -> int:
    """Run Orthanc in its own network namespace and forward 127.0.0.1:``port`` to it until SIGTERM/SIGINT."""
    reason = orthanc_missing()
    if reason:
        print(f"orthanc.py: {reason}", file=sys.stderr)
        return 2
    config = write_config(folder)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))  # the only socket bound on the host
    listener.listen(64)
    isolate = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--net"]
    log = open(folder / "orthanc.log", "ab")
    orthanc = subprocess.Popen(
        [*isolate, "sh", "-c", 'ip link set lo up && exec Orthanc "$0"', str(config)], stdout=log, stderr=log
    )

    def stop(*_):
        if orthanc.poll() is None:
            orthanc.terminate()
            try:
                orthanc.wait(20)
            except subprocess.TimeoutExpired:
                orthanc.kill()
        listener.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    own = _net_namespace(os.getpid())
    deadline = time.time() + 10
    while orthanc.poll() is None and _net_namespace(orthanc.pid) == own and time.time() < deadline:
        time.sleep(0.02)
    if orthanc.poll() is not None or _net_namespace(orthanc.pid) == own:
        print(f"orthanc.py: Orthanc did not start in its own namespace; see {folder / 'orthanc.log'}", file=sys.stderr)
        stop()
    # from here on, sockets this process creates live in Orthanc's namespace; the listener stays on the host
    with open(f"/proc/{orthanc.pid}/ns/net") as namespace:
        if ctypes.CDLL(None, use_errno=True).setns(namespace.fileno(), CLONE_NEWNET) != 0:
            print(f"orthanc.py: setns failed (errno {ctypes.get_errno()})", file=sys.stderr)
            stop()
    print(f"orthanc.py: serving http://127.0.0.1:{port}/dicom-web (data in {folder})", flush=True)
    threading.Thread(target=lambda: (orthanc.wait(), os.kill(os.getpid(), signal.SIGTERM)), daemon=True).start()
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return 0
        threading.Thread(target=_forward, args=(client,), daemon=True).start()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/system", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False



def stop_process_group(process: subprocess.Popen, term_wait: float = 20, kill_wait: float = 10) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its group: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, kill_wait)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue

class Orthanc:
    """``python tools/orthanc.py serve`` in its own process group; ``with Orthanc(folder) as o: o.dicomweb``."""

    def __init__(self, folder: str | os.PathLike, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "serve", "--dir", str(self.folder), "--port", str(self.port)],
            stdout=open(self.folder / "serve.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                logs = "".join(p.read_text()[-3000:] for p in self.folder.glob("*.log"))
                self.process = None
                raise RuntimeError(f"Orthanc exited at start-up:\n{logs}")
            if answers(self.url):
                return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer at {self.url} within {timeout} s; logs in {self.folder}")

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process_group(self.process, term_wait=30)
        self.process = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/orthanc.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run Orthanc on 127.0.0.1 until Ctrl-C")
    run.add_argument("--dir", required=True, type=Path, help="configuration, storage and index go here")
    run.add_argument("--port", type=int, default=8042)
    run.add_argument("--upload-demo", type=int, default=0, metavar="N", help="upload the first N demo cases")
    args = parser.parse_args(argv)
    if args.upload_demo:
        url = f"http://127.0.0.1:{args.port}"

        def upload() -> None:
            from tokenseg.data.demo import default_demo_dir, ensure_demo_dataset
            from tokenseg.data.dicom import upload_demo_cases

            while not answers(url):
                time.sleep(0.3)
            for study in upload_demo_cases(ensure_demo_dataset(default_demo_dir()), f"{url}/dicom-web", args.upload_demo):
                print(f"orthanc.py: uploaded {study}", flush=True)

        threading.Thread(target=upload, daemon=True).start()
    return serve(args.dir.resolve(), args.port)


if __name__ == "__main__":
    sys.exit(main())
