"""pytest fixtures for a real local S3 server (SeaweedFS, via infra/local_s3.py).

Use from tests/conftest.py with either

    from tests.s3_fixture import local_s3, s3_bucket, s3_client, s3_env  # noqa: F401

or `pytest_plugins = ["tests.s3_fixture"]` in the top-level conftest (not both: pytest then
warns that it cannot rewrite the already imported module). Each fixture needs only `local_s3`
besides itself, so any subset can be imported.

- `local_s3`: one server for the whole session (startup takes about 1.5 s, stopping 1.3 s).
- `s3_bucket`: a fresh, uniquely named bucket per test, so tests never see each other's objects.
- `s3_client`: a boto3 client with the server's endpoint and keys (or `boto3_client(server)`).
- `s3_env`: the AWS_* variables of the server for one test, restored afterwards.
A missing `weed` binary is a failure, not a skip: the documented test setup installs it.
"""

from __future__ import annotations

import os
import uuid

import pytest

from infra.local_s3 import REGION, LocalS3, find_weed, start_local_s3, stop_local_s3

# Variables that would otherwise override or contaminate what s3_env sets: a second endpoint
# that wins over AWS_ENDPOINT_URL (cxr.storage reads AWS_ENDPOINT_URL_S3 first), a session
# token or profile from the developer's shell, and ~/.aws files.
_SHADOWING_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                  "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory):
    try:
        find_weed()
    except FileNotFoundError as err:
        pytest.fail(str(err), pytrace=False)
    server = start_local_s3(str(tmp_path_factory.mktemp("local_s3")))
    try:
        yield server
    finally:
        stop_local_s3(server)


def boto3_client(server: LocalS3, *, secret_key: str | None = None):
    """A boto3 S3 client for server, endpoint and keys passed explicitly (secret_key: to test refusals)."""
    import boto3  # here, not at import: collecting tests that never touch S3 stays cheap

    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                        aws_access_key_id=server.access_key,
                        aws_secret_access_key=secret_key or server.secret_key)


@pytest.fixture
def s3_client(local_s3: LocalS3):
    return boto3_client(local_s3)


@pytest.fixture
def s3_bucket(local_s3: LocalS3) -> str:
    """The name of a new empty bucket, unique to this test."""
    # Depends on local_s3 only, so importing this fixture alone into a conftest is enough.
    # S3 bucket names: 3-63 chars of lowercase letters, digits and hyphens.
    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3_client(local_s3).create_bucket(Bucket=name)
    return name


def isolated_env(server: LocalS3) -> dict[str, str]:
    """The variables that point every AWS client at server, and at nothing of the developer's."""
    env = server.env()
    # botocore reads the region from AWS_DEFAULT_REGION only; keep both in step.
    env["AWS_DEFAULT_REGION"] = REGION
    # Empty AWS config and credentials files: nothing from the developer's ~/.aws applies.
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env[name] = os.devnull
    return env


def without_aws(env: dict[str, str]) -> dict[str, str]:
    """env with no AWS settings at all, not even the developer's (shadowing) ones."""
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


@pytest.fixture
def s3_env(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point every AWS client built during this test (boto3, pyarrow, cxr.storage) at the server."""
    for name in _SHADOWING_ENV:
        monkeypatch.delenv(name, raising=False)
    env = isolated_env(local_s3)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
