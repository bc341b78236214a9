"""Reading artifacts where a cluster wrote them: S3 (and MinIO, KFP's default) or Google Cloud Storage.

Through the usual clients, both optional dependencies imported only when a URI needs them:
``boto3`` for ``s3://`` and ``minio://`` (configured as usual: ``AWS_ENDPOINT_URL`` for MinIO or
another S3-compatible endpoint, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles...), and
``google-cloud-storage`` for ``gs://`` (application default credentials).

A KFP launcher uploads an output artifact's folder as the objects under its URI, so an artifact is
read back by copying every object under that prefix into a local folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError


@dataclass(frozen=True)
class Blob:
    key: str  # the object's key below the bucket
    modified: float  # seconds since the epoch


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key prefix) of `minio://bucket/a/b`, `s3://...` or `gs://...`."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not sep or scheme not in ("s3", "minio", "gs") or not bucket:
        raise CellpipeError(
            f"cannot read artifacts at {uri!r}: only s3://, minio:// and gs:// URIs are supported"
        )
    return scheme, bucket, prefix


class ObjectStore:
    """One bucket's objects, listed and downloaded with the scheme's client."""

    def __init__(self, uri: str):
        self.scheme, self.bucket, _ = split_uri(uri)
        self.where = f"{self.scheme}://{self.bucket}"
        self._client = self._connect()

    def _connect(self) -> Any:
        if self.scheme == "gs":
            try:
                from google.cloud import storage  # type: ignore[import-not-found,unused-ignore]
            except ImportError:
                raise CellpipeError(
                    "reading artifacts from Google Cloud Storage needs google-cloud-storage: "
                    "pip install 'cellpipe[gcs]'"
                ) from None
            return storage.Client().bucket(self.bucket)
        try:
            import boto3
        except ImportError:
            raise CellpipeError(
                f"reading artifacts from {self.where} (S3/MinIO) needs boto3: pip install 'cellpipe[s3]'"
            ) from None
        return boto3.client("s3")  # endpoint and credentials as boto3 finds them (AWS_ENDPOINT_URL, ...)

    def list(self, prefix: str) -> list[Blob]:
        """Every object whose key starts with `prefix`."""
        try:
            return list(self._list(prefix))
        except CellpipeError:
            raise
        except Exception as error:
            raise CellpipeError(f"cannot list {self.where}/{prefix}: {_reason(error)}") from None

    def _list(self, prefix: str) -> Iterator[Blob]:
        if self.scheme == "gs":
            for blob in self._client.list_blobs(prefix=prefix):
                yield Blob(blob.name, blob.updated.timestamp() if blob.updated else 0.0)
            return
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                yield Blob(item["Key"], item["LastModified"].timestamp())

    def download(self, prefix: str, target: Path) -> int:
        """Copy the objects under the folder `prefix` into `target`, keeping their relative paths."""
        folder = prefix.rstrip("/") + "/"
        count = 0
        for blob in self.list(folder):
            relative = blob.key[len(folder) :]
            if not relative or relative.endswith("/") or ".." in Path(relative).parts:
                continue
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.scheme == "gs":
                    self._client.blob(blob.key).download_to_filename(str(path))
                else:
                    self._client.download_file(self.bucket, blob.key, str(path))
            except Exception as error:
                raise CellpipeError(f"cannot read {self.where}/{blob.key}: {_reason(error)}") from None
            count += 1
        return count


def _reason(error: BaseException) -> str:
    """One line: the service's own message when it gave one."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code, message = response["Error"].get("Code", ""), response["Error"].get("Message", "")
        return f"{code}: {message}".strip(": ")
    return " ".join(f"{type(error).__name__}: {error}".split())
