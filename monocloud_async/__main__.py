"""``python -m monocloud_async``: the ``monocloud-async`` command line."""

from __future__ import annotations

from monocloud_async._cli import run

if __name__ == "__main__":
    run()
