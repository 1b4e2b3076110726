"""Shared fixtures: one local Ray on loopback for the whole session, tiny configs."""

from __future__ import annotations

import os
import sys

import pytest

from runner.ray_init import advertise_loopback
from tests.pgserver import postgres_server  # noqa: F401  (a session fixture: a real PostgreSQL)

advertise_loopback()  # before anything imports ray: the test Ray talks over 127.0.0.1 only
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_local_ray() -> None:
    """The session's local Ray on 127.0.0.1 (also restarted by a module that needed a cluster)."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([REPO] + sys.path)  # workers import tests.*
    # the loopback S3 server's made-up credentials, for the workers of the s3:// run dir test
    for name, value in S3_TEST_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
             num_cpus=4, logging_level="WARNING")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance on 127.0.0.1, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        start_local_ray()
    yield ray
    ray.shutdown()
