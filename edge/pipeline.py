"""Sliding analysis windows over a stream of audio blocks."""
from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["Windower"]


class Windower:
    """Cut a block stream into windows of ``window`` samples every ``hop`` samples.

    Parameters
    ----------
    window, hop : int
        In samples.

    ``push(block)`` yields ``(start_sample, window)`` for every window completed by the
    block; ``start_sample`` counts from the first sample ever pushed.
    """

    def __init__(self, window: int, hop: int):
        if hop <= 0 or window <= 0 or hop > window:
            raise ValueError(f"need 0 < hop ({hop}) <= window ({window})")
        self.window, self.hop = window, hop
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._next = 0  # absolute start index of the next window

    def push(self, block: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self._buf = np.concatenate([self._buf, np.asarray(block, np.float32)])
        while self._next + self.window <= self._buf_start + len(self._buf):
            i = self._next - self._buf_start
            yield self._next, self._buf[i:i + self.window].copy()
            self._next += self.hop
        drop = self._next - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
