"""An S3-compatible object store on a real socket: moto in server mode (`ThreadedMotoServer`).

The service talks to it through its own S3 client (obstore) over HTTP, exactly as it would to
AWS or MinIO; nothing in the client is replaced. Moto's state lives in this (the test) process,
so each test takes a bucket of its own (`new_bucket`). Moto's request recorder tells a test
which object calls the service made (`recorded`), e.g. that a file was never downloaded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

ACCESS_KEY_ID = "pdbridge-test-key"
SECRET_ACCESS_KEY = "pdbridge-test-secret"
REGION = "us-east-1"


class S3Standin:
    """moto's S3 on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def __enter__(self) -> S3Standin:
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def new_bucket(self) -> str:
        """A fresh, empty bucket (S3's CreateBucket over HTTP); returns its name."""
        name = f"media-{uuid.uuid4().hex[:16]}"
        response = httpx2.put(f"{self.url}/{name}", timeout=10)
        assert response.status_code == 200, response.text
        return name

    def settings(self, bucket: str, prefix: str = "media") -> dict[str, Any]:
        """Settings overrides (`make_settings(**...)`) for the service to use `bucket`."""
        return {
            "media_store": f"s3://{bucket}/{prefix}",
            "aws_endpoint_url": self.url,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "aws_region": REGION,
        }

    def environment(self, bucket: str, prefix: str = "media") -> dict[str, str]:
        """The same, as the environment variables of a `pdbridge` process."""
        return {name.upper(): str(value) for name, value in self.settings(bucket, prefix).items()}

    def objects(self, bucket: str) -> list[str]:
        """The keys in `bucket` (ListObjectsV2)."""
        response = httpx2.get(f"{self.url}/{bucket}", params={"list-type": "2"}, timeout=10)
        assert response.status_code == 200, response.text
        import xml.etree.ElementTree as ET

        tree = ET.fromstring(response.text)  # noqa: S314 -- moto's own answer, not outside input
        return [el.text or "" for el in tree.iter() if el.tag.endswith("}Key")]

    def start_recording(self) -> None:
        """Record every S3 request from now on (moto's recorder; in the current directory)."""
        httpx2.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=10)
        httpx2.post(f"{self.url}/moto-api/recorder/start-recording", timeout=10)

    def recorded(self) -> list[tuple[str, str]]:
        """(method, path) of every request recorded since `start_recording`."""
        httpx2.post(f"{self.url}/moto-api/recorder/stop-recording", timeout=10)
        text = httpx2.get(f"{self.url}/moto-api/recorder/download-recording", timeout=10).text
        found = []
        for line in text.splitlines():
            if line.strip():
                entry = json.loads(line)
                found.append((str(entry["method"]), httpx2.URL(str(entry["url"])).path))
        return found


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Standin]:
    with S3Standin() as server:
        yield server
