"""The report store against a real S3 API (moto's server on 127.0.0.1) and a local directory."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from tickvault.config import Settings
from tickvault.jobs.reports import (
    LocalReportStore,
    ReportStore,
    ReportStoreError,
    S3ReportStore,
)

PREFIX = "tickvault/profiles"
SECRET = "not-a-real-secret-but-treated-as-one"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        # Dummy credentials only, and no way for boto3 to find real ones or ask a metadata service.
        empty = tmp_path_factory.mktemp("aws") / "none"
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_settings(s3_endpoint: str) -> Settings:
    bucket = f"profiles-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return Settings(
        s3_endpoint_url=s3_endpoint,
        s3_bucket=bucket,
        s3_prefix=PREFIX,
        s3_region="us-east-1",
        s3_access_key_id=SecretStr("testing"),
        s3_secret_access_key=SecretStr(SECRET),
    )


@pytest.fixture
def raw_s3(s3_endpoint: str):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def artifacts(tmp_path: Path) -> dict[str, Path]:
    speedscope = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": "decode", "file": "wire.py", "line": 3}]},
        "profiles": [{"type": "sampled", "name": "t", "unit": "seconds", "startValue": 0, "endValue": 0.01,
                      "samples": [[0]], "weights": [0.01]}],
    }
    files = {
        "profile.speedscope.json": tmp_path / "profile.speedscope.json",
        "flamegraph.svg": tmp_path / "flamegraph.svg",
        "dump.txt": tmp_path / "dump.txt",
    }
    files["profile.speedscope.json"].write_text(json.dumps(speedscope))
    files["flamegraph.svg"].write_text('<?xml version="1.0" standalone="no"?><svg version="1.1"></svg>')
    files["dump.txt"].write_text("Thread 1 (active+gil)\n    decode (wire.py:3)\n")
    return files


WHEN = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)


def test_put_report_uploads_dated_keys_with_content_types(s3_settings, raw_s3, artifacts):
    store = ReportStore.from_settings(s3_settings)
    assert isinstance(store, S3ReportStore)
    stored = store.put_report("worker-1", WHEN, artifacts, {"samples": 1, "top_self": []})

    base = f"{PREFIX}/worker-1/2025-03-14/092653"
    expected = {
        f"{base}-profile.speedscope.json": "application/json",
        f"{base}-flamegraph.svg": "image/svg+xml",
        f"{base}-dump.txt": "text/plain; charset=utf-8",
        f"{base}-summary.json": "application/json",
    }
    listed = raw_s3.list_objects_v2(Bucket=s3_settings.s3_bucket)["Contents"]
    assert {obj["Key"] for obj in listed} == set(expected)
    for key, content_type in expected.items():
        assert raw_s3.head_object(Bucket=s3_settings.s3_bucket, Key=key)["ContentType"] == content_type

    assert stored.artifacts["flamegraph.svg"].uri == f"s3://{s3_settings.s3_bucket}/{base}-flamegraph.svg"
    assert stored.summary.key == f"{base}-summary.json"
    assert stored.location == f"s3://{s3_settings.s3_bucket}/{PREFIX}/worker-1/2025-03-14/"

    bucket = s3_settings.s3_bucket
    body = raw_s3.get_object(Bucket=bucket, Key=f"{base}-profile.speedscope.json")["Body"].read()
    assert {"$schema", "shared", "profiles"} <= json.loads(body).keys()
    svg = raw_s3.get_object(Bucket=s3_settings.s3_bucket, Key=f"{base}-flamegraph.svg")["Body"].read()
    assert svg.lstrip().startswith((b"<?xml", b"<svg"))


def test_presigned_links_download_the_artifacts_over_http(s3_settings, artifacts):
    store = ReportStore.from_settings(s3_settings)
    stored = store.put_report("worker-1", WHEN, artifacts, {"samples": 1})
    link = stored.artifacts["flamegraph.svg"].url
    assert link and link.startswith(s3_settings.s3_endpoint_url) and SECRET not in link
    # Path-style addressing: the bucket is in the path, not a hostname 127.0.0.1 could not resolve.
    assert f"/{s3_settings.s3_bucket}/{PREFIX}/" in link
    response = httpx.get(link, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.content == artifacts["flamegraph.svg"].read_bytes()


def test_latest_summary_returns_the_previous_report_across_days(s3_settings, artifacts):
    store = ReportStore.from_settings(s3_settings)
    day1 = datetime(2025, 3, 13, 23, 59, 58, tzinfo=UTC)
    t1 = datetime(2025, 3, 14, 8, 0, 0, tzinfo=UTC)
    t2 = datetime(2025, 3, 14, 9, 0, 0, 250_000, tzinfo=UTC)
    for n, when in enumerate((day1, t1, t2)):
        store.put_report("worker-1", when, artifacts, {"n": n})
    store.put_report("worker-2", t2 + timedelta(hours=1), artifacts, {"n": "other worker"})

    assert store.latest_summary("worker-1", t2 + timedelta(minutes=5)) == {"n": 2}
    assert store.latest_summary("worker-1", t2) == {"n": 1}  # a report is not its own predecessor
    assert store.latest_summary("worker-1", t1) == {"n": 0}  # previous day
    assert store.latest_summary("worker-1", day1) is None
    assert store.latest_summary("worker-3", t2) is None
    # Aware times in another zone mean the same instant.
    assert store.latest_summary("worker-1", t1.astimezone(timezone(timedelta(hours=-5)))) == {"n": 0}


async def test_async_wrappers_store_and_find_reports(s3_settings, artifacts):
    store = ReportStore.from_settings(s3_settings)
    await store.put_report_async("worker-1", WHEN, artifacts, {"n": "async"})
    assert await store.latest_summary_async("worker-1", WHEN + timedelta(seconds=1)) == {"n": "async"}


def test_missing_bucket_is_a_clear_store_error(s3_settings, artifacts):
    store = ReportStore.from_settings(s3_settings.model_copy(update={"s3_bucket": "no-such-bucket-here"}))
    with pytest.raises(ReportStoreError, match="NoSuchBucket.*no-such-bucket-here"):
        store.put_report("worker-1", WHEN, artifacts, {})


def test_standard_credential_chain_is_used_without_explicit_keys(s3_settings, artifacts):
    chain = s3_settings.model_copy(update={"s3_access_key_id": None, "s3_secret_access_key": None})
    store = ReportStore.from_settings(chain)  # picks up the fixture's dummy AWS_* environment
    store.put_report("worker-1", WHEN, artifacts, {"n": "chain"})
    assert store.latest_summary("worker-1", WHEN + timedelta(seconds=1)) == {"n": "chain"}


def test_secrets_never_reach_descriptions_or_logs(s3_settings, artifacts, caplog):
    caplog.set_level(logging.DEBUG, logger="tickvault")
    store = ReportStore.from_settings(s3_settings)
    store.put_report("worker-1", WHEN, artifacts, {})
    store.latest_summary("worker-1", WHEN)
    text = store.describe()
    assert s3_settings.s3_bucket in text and s3_settings.s3_endpoint_url in text
    assert SECRET not in text and SECRET not in caplog.text


def test_local_store_when_no_bucket_is_set(tmp_path, artifacts):
    settings = Settings(s3_bucket=None, profile_dir=tmp_path / "profiles")
    store = ReportStore.from_settings(settings)
    assert isinstance(store, LocalReportStore)
    description = store.describe()
    assert "TICKVAULT_S3_BUCKET is not set" in description and str(tmp_path / "profiles") in description

    earlier = WHEN - timedelta(days=1)
    store.put_report("worker-1", earlier, artifacts, {"n": 0})
    stored = store.put_report("worker-1", WHEN, artifacts, {"n": 1})
    svg = tmp_path / "profiles" / "worker-1" / "2025-03-14" / "092653-flamegraph.svg"
    assert svg.read_bytes() == artifacts["flamegraph.svg"].read_bytes()
    assert stored.artifacts["flamegraph.svg"].uri == svg.resolve().as_uri()
    assert stored.artifacts["flamegraph.svg"].content_type == "image/svg+xml"
    assert store.latest_summary("worker-1", WHEN) == {"n": 0}
    assert store.latest_summary("worker-1", WHEN + timedelta(seconds=1)) == {"n": 1}
    assert store.latest_summary("worker-1", earlier) is None
