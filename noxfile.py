"""Development sessions: ``nox`` runs tests, lint and typing; ``nox -s benchmarks`` measures."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session, *args: str) -> None:
    # Dependency groups (--group) need pip >= 25.1; a fresh venv may bring an older one.
    session.install("-U", "pip")
    session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (slow and benchmark tests excluded; Redis tests need redis-server)."""
    _install(session, "-e", ".[orjson,redis]", "--group", "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    _install(session, "--group", "lint")
    session.run("ruff", "check", "monocloud_async", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "monocloud_async", "tests", "benchmarks", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    _install(session, "-e", ".", "--group", "typing")
    session.run("mypy", "--strict", "monocloud_async")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run the benchmarks (not part of the default sessions)."""
    _install(session, "-e", ".[orjson]", "--group", "test")
    session.run("python", "-m", "benchmarks", *session.posargs)
