"""Connecting to Ray: a local instance on loopback by default, or a cluster by address."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional


def _code_path() -> str:
    """The driver's import path for the workers, so a trainable in the current directory imports."""
    entries = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
    return os.pathsep.join(dict.fromkeys(entries))


def advertise_loopback() -> None:
    """Make a single-host Ray advertise 127.0.0.1 instead of the first routable address.

    Ray resolves ``_node_ip_address="127.0.0.1"`` to a routable IP unless cluster mode is off, and
    reads that switch when ``ray`` is first imported: call this before importing ray.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@contextmanager
def ray_session(address: Optional[str] = None) -> Iterator[None]:
    """Start (and later stop) a local Ray on 127.0.0.1 with no dashboard, or join ``address``.

    An already initialised Ray (a test session, a notebook) is used as it is and left running.
    """
    if address is None:
        advertise_loopback()
    import ray

    if ray.is_initialized():
        yield
        return
    common = {"include_dashboard": False, "logging_level": logging.WARNING,
              "configure_logging": True, "log_to_driver": True}
    if address is None:
        # Token auth stays on (a local Ray is on loopback, and the token keeps other local users
        # out); only the warning Ray prints about it on every start is silenced.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        # workers inherit the environment: cheaper than a runtime_env, which costs each new actor
        os.environ["PYTHONPATH"] = _code_path()
        ray.init(address="local", _node_ip_address="127.0.0.1", **common)
    else:
        if os.path.exists(os.path.expanduser("~/.ray/auth_token")):
            os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 won't infer it for an address
        ray.init(address=address, runtime_env={"working_dir": os.getcwd(),
                                               "excludes": ["runs/", ".venv/", ".git/"]}, **common)
    try:
        yield
    finally:
        ray.shutdown()
