"""Studies named by ``s3://bucket/key``: planned (listed, sized) before anything is downloaded.

A key ending in ``.zip`` is one zip object (handled as an uploaded zip); any other key is a
prefix, and every object under ``key/`` is fetched (any layout; non-DICOM files are skipped).
boto3 takes the endpoint and credentials from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ... or the pod's service account).

:meth:`S3Study.plan` asks S3 for sizes only (``HeadObject``, ``ListObjectsV2``), so a request's
limits can be checked across all its studies first; :meth:`S3Study.fetch` downloads. A
reference's key may name a patient: every message lists the URI as private (hashed in logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidnet.serve.params import ServeParams
from covidnet.serve.study import ServeInputError, extract_members, open_zip


@dataclass
class S3Study:
    """One reference and what S3 said about it: ``objects`` (key, size) of a prefix, or one zip."""

    uri: str
    bucket: str
    key: str
    label: str
    objects: list[tuple[str, int]]
    is_zip: bool

    @property
    def n_files(self) -> int:
        """Files it holds, as far as known before the download (a zip object counts once)."""
        return len(self.objects)

    @property
    def n_bytes(self) -> int:
        """Bytes to download."""
        return sum(size for _, size in self.objects)

    def _error(self, what: str, rule: str) -> ServeInputError:
        return ServeInputError(f"{self.label}: {self.uri}: {what}", rule, {"ref": [self.uri]})

    @classmethod
    def plan(cls, uri: str, params: ServeParams, label: str = "s3") -> "S3Study":
        """List or size the reference; check ``serve.max_members`` and ``serve.max_uncompressed_mb``.

        Raises:
            ServeInputError: not an ``s3://bucket/key`` URI; no such object, prefix or bucket;
                access denied; too many objects or bytes.
        """
        if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:].strip("/"):
            raise ServeInputError(f"{label}: not an s3://bucket/key reference", "ref.format",
                                  {"ref": [uri] if isinstance(uri, str) else []})
        bucket, key = uri[5:].split("/", 1)
        study = cls(uri, bucket, key, label, [], key.lower().endswith(".zip"))
        cap = int(params.max_uncompressed_mb * 1024 * 1024)
        with study._s3_errors():
            s3 = _client()
            if study.is_zip:
                head = s3.head_object(Bucket=bucket, Key=key)
                study.objects = [(key, int(head["ContentLength"]))]
            else:
                prefix = key.rstrip("/") + "/"
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                    study.objects += [(o["Key"], int(o["Size"])) for o in page.get("Contents", [])
                                      if not o["Key"].endswith("/")]
                    if len(study.objects) > params.max_members:
                        break
                if not study.objects:
                    raise study._error("no object found under this prefix (404)", "ref.not_found")
        if study.n_files > params.max_members:
            raise study._error(f"more than serve.max_members {params.max_members} objects", "ref.max_members")
        if study.n_bytes > cap:
            raise study._error(f"{study.n_bytes} bytes > serve.max_uncompressed_mb {params.max_uncompressed_mb:g} MiB",
                               "ref.max_uncompressed")
        return study

    def fetch(self, dest: Path | str, params: ServeParams) -> int:
        """Download into ``dest`` (a zip is checked and extracted as an uploaded one); the files written.

        Raises:
            ServeInputError: as :meth:`plan`, and every refusal of an uploaded zip.
        """
        dest = Path(dest)
        with self._s3_errors():
            s3 = _client()
            if self.is_zip:
                data = s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
                return extract_members(open_zip(data, params, f"{self.label} (zip object)"), dest, params)
            for i, (key, _) in enumerate(self.objects):
                s3.download_file(self.bucket, key, str(dest / f"{i:06d}.dcm"))
        return len(self.objects)

    def _s3_errors(self):
        return _S3Errors(self)


class _S3Errors:
    """S3's errors as refusals naming the reference (a missing object is the client's mistake)."""

    def __init__(self, study: S3Study) -> None:
        self.study = study

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            what = "not found" if code in ("NoSuchKey", "404", "NoSuchBucket") else f"cannot be read ({code[:40]})"
            raise self.study._error(what, "ref.not_found" if what == "not found" else "ref.access") from None
        if isinstance(exc, BotoCoreError):
            raise self.study._error(f"cannot be fetched ({type(exc).__name__})", "ref.fetch") from None
        return False


def _client():
    import boto3

    return boto3.client("s3")
