"""Shared fixtures: one local Ray on loopback for the whole session, tiny configs."""

from __future__ import annotations

import os
import sys

import pytest

from runner.ray_init import advertise_loopback
from tests.pgserver import postgres_server  # noqa: F401  (a session fixture: a real PostgreSQL)

advertise_loopback()  # before anything imports ray: the test Ray talks over 127.0.0.1 only
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance on 127.0.0.1, shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        os.environ["PYTHONPATH"] = os.pathsep.join([REPO] + sys.path)  # workers import tests.*
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 num_cpus=4, logging_level="WARNING")
    yield ray
    ray.shutdown()
