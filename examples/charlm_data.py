"""The character-level language modelling task: CPython's own pydoc topics text, no download.

The text is ``pydoc_data.topics`` (about 465 KB of Python's reference documentation, shipped with
every CPython), its topics joined in sorted order. The vocabulary is the sorted set of its
characters; the last 10% of the text is the validation split. A training batch is a pure function
of (seed, step), so the data position of a resumed trial is its step; the validation windows are
fixed (evenly spaced over the validation split), the same for every trial and every report.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def text() -> str:
    """The corpus: every pydoc topic, in sorted order of topic name."""
    from pydoc_data import topics

    return "".join(topics.topics[key] for key in sorted(topics.topics))


@lru_cache(maxsize=1)
def vocab() -> tuple[str, ...]:
    """The characters of the corpus, sorted: token ``i`` is ``vocab()[i]``."""
    return tuple(sorted(set(text())))


def encode(s: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(vocab())}
    return np.fromiter((index[ch] for ch in s), dtype=np.int64, count=len(s))


def decode(tokens) -> str:
    chars = vocab()
    return "".join(chars[int(t)] for t in tokens)


@lru_cache(maxsize=1)
def splits() -> tuple[np.ndarray, np.ndarray]:
    """(train, val) token arrays: the first 90% of the text and the last 10%, disjoint."""
    tokens = encode(text())
    cut = len(tokens) - len(tokens) // 10
    train, val = tokens[:cut], tokens[cut:]
    train.flags.writeable = False  # shared through the cache
    val.flags.writeable = False
    return train, val


def batch_starts(seed: int, step: int, batch_size: int, context: int, n: int) -> np.ndarray:
    """Start offsets of the ``batch_size`` windows (``context + 1`` tokens each, inside a split
    of ``n`` tokens) of update ``step``: a pure function of its arguments."""
    if n < context + 1:
        raise ValueError(f"a split of {n} tokens holds no window of {context + 1}")
    return np.random.default_rng([seed, step]).integers(0, n - context, size=batch_size)


def val_starts(context: int, n: int, count: int = 32) -> np.ndarray:
    """The fixed validation windows: ``count`` starts evenly spaced over a split of ``n`` tokens."""
    return np.linspace(0, n - context - 1, count).astype(np.int64)


def windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each ``len(starts) x context``: targets are inputs shifted by one."""
    chunk = tokens[starts[:, None] + np.arange(context + 1)]
    return chunk[:, :-1], chunk[:, 1:]
