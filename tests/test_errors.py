"""The error tree."""

from __future__ import annotations

import pickle

import pytest

from monocloud_async import errors


class TestTree:
    @pytest.mark.parametrize(
        ("cls", "bases"),
        [
            (errors.ConfigurationError, (errors.MonoCloudError, ValueError)),
            (errors.InvalidRequestError, (errors.MonoCloudError, ValueError)),
            (errors.MonoCloudConnectionError, (errors.TransportError, ConnectionError)),
            (errors.MonoCloudTimeoutError, (errors.TransportError, TimeoutError)),
            (errors.ResponseDecodeError, (errors.MonoCloudError,)),
            (errors.RateLimitError, (errors.APIError,)),
            (errors.ServerError, (errors.APIError,)),
            (errors.UnprocessableEntityError, (errors.APIError,)),
        ],
    )
    def test_bases(self, cls, bases):
        """Each error inherits the documented bases, builtins included."""
        assert all(issubclass(cls, base) for base in bases)

    def test_every_name_exported(self):
        """__all__ lists every error class of the module."""
        found = {
            name
            for name, obj in vars(errors).items()
            if isinstance(obj, type) and issubclass(obj, Exception)
        }
        assert found == set(errors.__all__)

    def test_transport_error_pickles(self):
        """Keyword details survive pickling."""
        err = errors.MonoCloudTimeoutError("slow", attempts=2, maybe_sent=False)
        copy = pickle.loads(pickle.dumps(err))
        assert ("slow", 2, False) == (str(copy), copy.attempts, copy.maybe_sent)
