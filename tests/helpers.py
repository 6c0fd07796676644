"""Small helpers shared by test modules (imported by name: tests/ is on sys.path)."""

from __future__ import annotations

import random

from monocloud_async import RetryPolicy

#: Retries with backoffs short enough for tests over real sockets.
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


class TopOfRange(random.Random):
    """Jitter that always picks the top of its range, so a backoff is exactly its cap."""

    def uniform(self, a: float, b: float) -> float:
        return b
