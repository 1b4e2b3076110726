"""sweep's runner: ``from runner import run`` runs a sweep from Python (see runner.api).

The API is imported on first use, so the workers' ``import runner.checkpoint`` stays light.
"""

from typing import Any

__all__ = ["run", "Result"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from runner import api

        return getattr(api, name)
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
