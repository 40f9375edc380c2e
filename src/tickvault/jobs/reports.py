"""Where profiling reports are kept: an S3 bucket (AWS, MinIO, moto, ...) or a local directory.

One report is a handful of artifacts (speedscope JSON, flamegraph SVG, py-spy dumps) and a
``summary.json``, stored under ``{prefix}/{worker}/{YYYY-MM-DD}/{HHMMSS}-{name}`` (UTC), so a
bucket listing reads as a calendar and the previous report is found by listing one day at a time,
newest first, instead of the whole history. Two reports of one worker in the same second share
keys: the later overwrites the earlier (profiling windows are seconds to minutes long).

:meth:`ReportStore.from_settings` picks :class:`S3ReportStore` when ``TICKVAULT_S3_BUCKET`` is set,
else :class:`LocalReportStore` under ``TICKVAULT_PROFILE_DIR``; :meth:`ReportStore.describe` says
which. boto3 blocks: from an event loop call the ``*_async`` methods, which run it in a thread.
This module must never log or return a secret; presigned URLs carry the access key *id* and a
signature, as every presigned URL does, never the secret key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickvault.config import ConfigError, Settings

if TYPE_CHECKING:
    from tickvault.jobs.profiling import ProfileReport, Regression

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
_SUMMARY_SUFFIX = f"-{SUMMARY_NAME}"
# SigV4 presigned URLs live at most 7 days; a week covers the review of a daily profile.
DEFAULT_PRESIGN_SECONDS = 7 * 24 * 3600
CONTENT_TYPES = {
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class ReportStoreError(RuntimeError):
    """The store could not be written or read; the message names the bucket/key or path."""


def content_type_for(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), DEFAULT_CONTENT_TYPE)


def _utc(when: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken to be UTC already."""
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def _check_component(what: str, value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r} for a report key: non-empty, no '/'")
    return value


def report_stem(worker: str, when: datetime) -> str:
    """``{worker}/{YYYY-MM-DD}/{HHMMSS}``: the part of every key of one report before ``-{name}``."""
    when = _utc(when)
    return f"{_check_component('worker', worker)}/{when:%Y-%m-%d}/{when:%H%M%S}"


def _when_of(day: str, filename: str) -> datetime | None:
    """The report time encoded in ``{day}/{HHMMSS}-...``, or None for a foreign object."""
    try:
        return datetime.strptime(day + filename[:6], "%Y-%m-%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class StoredArtifact:
    name: str
    key: str  # the S3 key, or the path relative to the local root
    uri: str  # s3://bucket/key or file:///...
    url: str | None  # a link a browser can open: presigned HTTPS URL, or the file:// URI
    content_type: str
    size: int


@dataclass(frozen=True)
class StoredReport:
    worker: str
    when: datetime
    location: str  # URI of the report's "folder" (day prefix)
    summary: StoredArtifact
    artifacts: dict[str, StoredArtifact] = field(default_factory=dict)


class ReportStore(ABC):
    """Keeps profiling reports and finds the previous one."""

    @staticmethod
    def from_settings(
        settings: Settings, *, presign_seconds: int | None = DEFAULT_PRESIGN_SECONDS
    ) -> ReportStore:
        if settings.s3_bucket:
            return S3ReportStore.from_settings(settings, presign_seconds=presign_seconds)
        return LocalReportStore(settings.profile_dir)

    @abstractmethod
    def describe(self) -> str:
        """Where reports go, for logs and the Prefect UI (never includes credentials)."""

    @abstractmethod
    def put_report(
        self, worker: str, when: datetime, files: Mapping[str, Path], summary: Mapping[str, Any]
    ) -> StoredReport:
        """Store ``files`` (artifact name → local path) and ``summary`` as one report at ``when``."""

    @abstractmethod
    def latest_summary(self, worker: str, before: datetime) -> dict[str, Any] | None:
        """The summary of ``worker``'s newest report strictly before ``before`` (to the second), or None."""

    async def put_report_async(
        self, worker: str, when: datetime, files: Mapping[str, Path], summary: Mapping[str, Any]
    ) -> StoredReport:
        return await asyncio.to_thread(self.put_report, worker, when, files, summary)

    async def latest_summary_async(self, worker: str, before: datetime) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.latest_summary, worker, before)


def _summary_bytes(summary: Mapping[str, Any]) -> bytes:
    return (json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


# --- local directory --------------------------------------------------------------------------


class LocalReportStore(ReportStore):
    """Reports as files under ``root``, laid out like the S3 keys (no prefix)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def describe(self) -> str:
        return f"local directory {self.root} (TICKVAULT_S3_BUCKET is not set, so nothing is uploaded)"

    def _artifact(self, name: str, path: Path) -> StoredArtifact:
        uri = path.resolve().as_uri()
        return StoredArtifact(
            name=name,
            key=str(path.relative_to(self.root)),
            uri=uri,
            url=uri,
            content_type=content_type_for(name),
            size=path.stat().st_size,
        )

    def put_report(
        self, worker: str, when: datetime, files: Mapping[str, Path], summary: Mapping[str, Any]
    ) -> StoredReport:
        stem = self.root / report_stem(worker, when)
        stem.parent.mkdir(parents=True, exist_ok=True)
        artifacts = {}
        try:
            for name, src in files.items():
                dest = stem.parent / f"{stem.name}-{_check_component('artifact name', name)}"
                if Path(src).resolve() != dest.resolve():
                    shutil.copyfile(src, dest)
                artifacts[name] = self._artifact(name, dest)
            summary_path = stem.parent / f"{stem.name}{_SUMMARY_SUFFIX}"
            tmp = summary_path.with_name(f".{summary_path.name}.tmp")
            tmp.write_bytes(_summary_bytes(summary))
            tmp.replace(summary_path)  # written last and atomically: a summary means a complete report
        except OSError as exc:
            raise ReportStoreError(f"cannot write report to {stem.parent}: {exc}") from exc
        log.info("stored profiling report of %s in %s", worker, stem.parent)
        return StoredReport(
            worker=worker,
            when=_utc(when),
            location=stem.parent.resolve().as_uri(),
            summary=self._artifact(SUMMARY_NAME, summary_path),
            artifacts=artifacts,
        )

    def latest_summary(self, worker: str, before: datetime) -> dict[str, Any] | None:
        limit = _utc(before).replace(microsecond=0)
        base = self.root / _check_component("worker", worker)
        if not base.is_dir():
            return None
        for day in sorted((d for d in base.iterdir() if d.is_dir()), reverse=True):
            if day.name > f"{limit:%Y-%m-%d}":
                continue
            candidates = []
            for path in day.glob(f"*{_SUMMARY_SUFFIX}"):
                when = _when_of(day.name, path.name)
                if when is not None and when < limit:
                    candidates.append((when, path))
            for _, path in sorted(candidates, reverse=True):
                try:
                    return json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    log.warning("skipping unreadable summary %s: %s", path, exc)
        return None


# --- S3 ---------------------------------------------------------------------------------------


class S3ReportStore(ReportStore):
    """Reports in an S3 bucket under ``{prefix}/``, through one boto3 client.

    The client is built once (boto3 clients are thread-safe; the ``*_async`` methods share it
    across threads). Timeouts and retries are explicit below rather than boto's defaults: a
    profile upload should fail within about a minute, not hang a flow run.
    """

    CONNECT_TIMEOUT_S = 5
    READ_TIMEOUT_S = 60
    MAX_ATTEMPTS = 5  # botocore "standard" mode: backoff with jitter on throttling and 5xx

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        presign_seconds: int | None = DEFAULT_PRESIGN_SECONDS,
    ):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.presign_seconds = presign_seconds

    @classmethod
    def from_settings(
        cls, settings: Settings, *, presign_seconds: int | None = DEFAULT_PRESIGN_SECONDS
    ) -> S3ReportStore:
        import boto3
        from botocore.config import Config

        if not settings.s3_bucket:
            raise ConfigError("TICKVAULT_S3_BUCKET: required for the S3 report store")
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        if (key_id is None) != (secret is None):
            raise ConfigError(
                "TICKVAULT_S3_ACCESS_KEY_ID and TICKVAULT_S3_SECRET_ACCESS_KEY: set both, or neither "
                "to use the standard AWS credential chain"
            )
        session = boto3.session.Session(
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.s3_region,
        )
        config = Config(
            region_name=settings.s3_region,
            signature_version="s3v4",
            # S3-compatible servers (MinIO, moto, Ceph) rarely have wildcard DNS for virtual-host
            # buckets; path style works everywhere they do. AWS itself gets boto's default.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
            retries={"max_attempts": cls.MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=cls.CONNECT_TIMEOUT_S,
            read_timeout=cls.READ_TIMEOUT_S,
        )
        client = session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
        return cls(
            client,
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            presign_seconds=presign_seconds,
        )

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"S3 bucket {self.bucket!r} under {self._base() or '(root)'} at {where} (region {self.region})"

    def _base(self, worker: str | None = None) -> str:
        parts = [p for p in (self.prefix, worker) if p]
        return "/".join(parts)

    def _key(self, stem: str, name: str) -> str:
        return f"{self._base()}/{stem}-{name}" if self.prefix else f"{stem}-{name}"

    def _presign(self, key: str) -> str | None:
        if not self.presign_seconds:
            return None
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_seconds
            )
        except Exception as exc:  # presigning is a convenience; the s3:// URI is still valid
            log.warning("cannot presign s3://%s/%s: %s", self.bucket, key, type(exc).__name__)
            return None

    def _artifact(self, name: str, key: str, size: int) -> StoredArtifact:
        return StoredArtifact(
            name=name,
            key=key,
            uri=f"s3://{self.bucket}/{key}",
            url=self._presign(key),
            content_type=content_type_for(name),
            size=size,
        )

    def _error(self, action: str, key: str, exc: Exception) -> ReportStoreError:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError | BotoCoreError):
            exc = exc.__context__  # upload_file wraps the ClientError that names the cause
        if isinstance(exc, NoCredentialsError):
            detail = (
                "no credentials: set TICKVAULT_S3_ACCESS_KEY_ID and TICKVAULT_S3_SECRET_ACCESS_KEY, "
                "or configure the standard AWS chain (env, ~/.aws, instance role)"
            )
        elif isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
            if err.get("Code") == "NoSuchBucket":
                detail += f" (create bucket {self.bucket!r} or fix TICKVAULT_S3_BUCKET)"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        where = self.endpoint_url or "AWS"
        return ReportStoreError(f"cannot {action} s3://{self.bucket}/{key} at {where}: {detail}")

    def put_report(
        self, worker: str, when: datetime, files: Mapping[str, Path], summary: Mapping[str, Any]
    ) -> StoredReport:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        stem = report_stem(worker, when)
        artifacts = {}
        key = ""
        try:
            for name, path in files.items():
                key = self._key(stem, _check_component("artifact name", name))
                # upload_file streams from disk and switches to multipart for large files.
                extra = {"ContentType": content_type_for(name)}
                self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)
                artifacts[name] = self._artifact(name, key, Path(path).stat().st_size)
            # The summary goes last: its presence marks the report complete for latest_summary.
            key = self._key(stem, SUMMARY_NAME)
            body = _summary_bytes(summary)
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type_for(SUMMARY_NAME)
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._error("upload", key, exc) from exc
        except OSError as exc:
            raise ReportStoreError(f"cannot read artifact for s3://{self.bucket}/{key}: {exc}") from exc
        day_prefix = stem.rsplit("/", 1)[0]
        log.info("stored profiling report of %s at s3://%s/%s/", worker, self.bucket, self._base(day_prefix))
        return StoredReport(
            worker=worker,
            when=_utc(when),
            location=f"s3://{self.bucket}/{self._base(day_prefix)}/",
            summary=self._artifact(SUMMARY_NAME, key, len(body)),
            artifacts=artifacts,
        )

    def _list(self, prefix: str, *, delimiter: str | None = None) -> tuple[list[str], list[str]]:
        """(keys, common prefixes) under ``prefix``, all pages."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        keys: list[str] = []
        prefixes: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            keys.extend(obj["Key"] for obj in page.get("Contents", ()))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        return keys, prefixes

    def latest_summary(self, worker: str, before: datetime) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        limit = _utc(before).replace(microsecond=0)
        base = self._base(_check_component("worker", worker)) + "/"
        key = base
        try:
            _, days = self._list(base, delimiter="/")
            for day_prefix in sorted(days, reverse=True):
                day = day_prefix[len(base):].rstrip("/")
                if day > f"{limit:%Y-%m-%d}":
                    continue
                keys, _ = self._list(day_prefix)
                candidates = []
                for k in keys:
                    if k.endswith(_SUMMARY_SUFFIX):
                        when = _when_of(day, k.rsplit("/", 1)[1])
                        if when is not None and when < limit:
                            candidates.append((when, k))
                for _, key in sorted(candidates, reverse=True):
                    body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                    try:
                        return json.loads(body)
                    except ValueError as exc:
                        log.warning("skipping unreadable summary s3://%s/%s: %s", self.bucket, key, exc)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("read", key, exc) from exc
        return None


# --- the profiles row: what the database remembers of a stored report --------------------------


def profile_row(report: ProfileReport, stored: StoredReport, regressions: Sequence[Regression]) -> tuple:
    """Pure: the :data:`~tickvault.db.tables.PROFILES` values of one stored report (CPU %, RSS in MB,
    the summary and the regressions as JSON)."""
    from psycopg.types.json import Jsonb

    from tickvault.jobs.profiling import DUMP_TEXT_FILE, FLAMEGRAPH_FILE, SPEEDSCOPE_FILE

    summary = report.summary
    rss = (summary.get("rss") or {}).get("mean_bytes")

    def key(name: str) -> str | None:
        artifact = stored.artifacts.get(name)
        return artifact.key if artifact else None

    return (
        stored.when, stored.worker, report.pid, report.seconds, stored.location,
        key(SPEEDSCOPE_FILE), key(FLAMEGRAPH_FILE), key(DUMP_TEXT_FILE), stored.summary.key,
        (summary.get("cpu") or {}).get("mean_percent"),
        rss / 2**20 if rss is not None else None,
        Jsonb(summary),
        Jsonb([{"function": r.function, "previous_share": r.previous_share, "current_share": r.current_share,
                "kind": r.kind} for r in regressions]),
    )


async def record_profile_row(url: str, row: tuple) -> int:
    """Insert one ``profiles`` row (:func:`profile_row`); its id."""
    import psycopg

    from tickvault.db.tables import INSERT_PROFILE

    async with await psycopg.AsyncConnection.connect(url, connect_timeout=10) as conn:
        row_id = await (await conn.execute(INSERT_PROFILE, row)).fetchone()
        await conn.commit()
    return int(row_id[0])  # type: ignore[index]
