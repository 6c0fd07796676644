"""MonoCloudClient: configuration, wire format, lifecycle and secrets (HTTP mocked)."""

from __future__ import annotations

import gc
import json
import logging
import re
import warnings

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import CallbackResult, aioresponses

from monocloud_async import MonoCloudClient, RetryPolicy, errors

DOMAIN = "acme.us.monocloud.com"
BASE = f"https://{DOMAIN}/api"
KEY = "mc_secret_key_0123456789"
PHONE = "+919988776655"
KEY_127 = ConnectionKey("127.0.0.1", 1, False, True, None, None, None, None)


@pytest.fixture(name="mocked")
def _mocked():
    with aioresponses() as m:
        yield m


@pytest_asyncio.fixture(name="client")
async def _client():
    async with MonoCloudClient(DOMAIN, KEY, retry=RetryPolicy.none()) as client:
        yield client


def only_call(mocked, method, url):
    calls = [
        c for (m, u), cs in mocked.requests.items() if m == method and str(u) == url for c in cs
    ]
    assert 1 == len(calls), mocked.requests.keys()
    return calls[0].kwargs


@pytest.mark.asyncio
class TestWireFormat:
    async def test_add_phone(self, mocked, client, user_json):
        """POST users/{id}/phones with the key, JSON headers and the exact body."""
        mocked.post(f"{BASE}/users/UOtBaOybB6dTpIJNrnkRw/phones", payload=user_json)
        user = await client.users.add_phone("UOtBaOybB6dTpIJNrnkRw", PHONE, is_verified=True)
        assert "UOtBaOybB6dTpIJNrnkRw" == user.user_id
        sent = only_call(mocked, "POST", f"{BASE}/users/UOtBaOybB6dTpIJNrnkRw/phones")
        assert {
            "phone_number": PHONE,
            "is_verified": True,
            "skip_restriction_checks": False,
        } == json.loads(sent["data"])
        headers = sent["headers"]
        assert KEY == headers["X-API-Key"]
        assert "application/json" == headers["Content-Type"]
        assert "application/json, application/problem+json" == headers["Accept"]
        assert re.fullmatch(
            r"monocloud-async/\S+ Python/\d+\.\d+\.\d+\S* aiohttp/\S+", headers["User-Agent"]
        )
        assert sent["allow_redirects"] is False

    @pytest.mark.parametrize(
        ("user_id", "path"),
        [("a/b", "a%2Fb"), ("x y", "x%20y"), ("../admin", "..%2Fadmin"), ("q?x=1", "q%3Fx%3D1")],
    )
    async def test_odd_ids_stay_one_segment(self, mocked, client, user_json, user_id, path):
        """Odd user ids are sent percent-encoded as a single path segment."""
        seen: list[str] = []

        def record(url, **kwargs):
            seen.append(url.raw_path)
            return CallbackResult(payload=user_json)

        mocked.get(re.compile(r".*"), callback=record)
        await client.users.get_user(user_id)
        assert [f"/api/users/{path}"] == seen

    async def test_get_user_has_no_body(self, mocked, client, user_json):
        """GET users/{id} sends no body and no Content-Type."""
        mocked.get(f"{BASE}/users/u1", payload=user_json)
        await client.users.get_user("u1")
        sent = only_call(mocked, "GET", f"{BASE}/users/u1")
        assert sent["data"] is None
        assert "Content-Type" not in sent["headers"]

    @pytest.mark.parametrize(
        ("args", "kwargs"),
        [
            (("", PHONE), {}),
            ((".", PHONE), {}),
            (("..", PHONE), {}),
            (("u", "0919988776655"), {}),
            (("u", "+0919"), {}),
            (("u", PHONE), {"is_verified": "yes"}),
        ],
    )
    async def test_bad_input_sends_nothing(self, mocked, client, args, kwargs):
        """Invalid arguments raise InvalidRequestError before any request."""
        with pytest.raises(errors.InvalidRequestError):
            await client.users.add_phone(*args, **kwargs)
        assert {} == mocked.requests

    async def test_redirects_are_not_followed(self, mocked, client):
        """A redirect is an error; the key is never sent to the Location."""
        mocked.post(
            f"{BASE}/users/u/phones", status=307, headers={"Location": "https://evil.example/x"}
        )
        with pytest.raises(errors.APIError) as info:
            await client.users.add_phone("u", PHONE)
        assert 307 == info.value.status
        assert [("POST", f"{BASE}/users/u/phones")] == [(m, str(u)) for m, u in mocked.requests]


@pytest.mark.asyncio
class TestResponses:
    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (400, errors.BadRequestError),
            (401, errors.UnauthorizedError),
            (403, errors.ForbiddenError),
            (404, errors.NotFoundError),
            (409, errors.ConflictError),
            (422, errors.UnprocessableEntityError),
            (500, errors.ServerError),
        ],
    )
    async def test_errors_carry_status_headers_and_attempts(self, mocked, client, status, cls):
        """Error responses raise the class for their status with headers and attempts."""
        mocked.post(
            f"{BASE}/users/u/phones",
            status=status,
            body=json.dumps({"title": "Nope", "status": status, "detail": "no"}),
            headers={"Content-Type": "application/problem+json", "X-Request-Id": "rid-9"},
        )
        with pytest.raises(cls) as info:
            await client.users.add_phone("u", PHONE)
        assert (status, "rid-9", 1) == (
            info.value.status,
            info.value.request_id,
            info.value.attempts,
        )
        assert "rid-9" == info.value.headers["x-request-id"]

    async def test_decode_error(self, mocked, client):
        """A 200 that is not a User is a ResponseDecodeError."""
        mocked.post(f"{BASE}/users/u/phones", body=b"<html>ok</html>", status=200)
        with pytest.raises(errors.ResponseDecodeError):
            await client.users.add_phone("u", PHONE)

    @pytest.mark.parametrize(
        ("exc", "cls", "maybe_sent"),
        [
            (
                aiohttp.ClientConnectorError(KEY_127, OSError(111, "refused")),
                errors.MonoCloudConnectionError,
                False,
            ),
            (aiohttp.ServerDisconnectedError(), errors.MonoCloudConnectionError, True),
            (aiohttp.ConnectionTimeoutError(), errors.MonoCloudTimeoutError, False),
            (aiohttp.SocketTimeoutError(), errors.MonoCloudTimeoutError, True),
            (TimeoutError(), errors.MonoCloudTimeoutError, True),
            (aiohttp.ClientPayloadError("cut"), errors.MonoCloudConnectionError, True),
            (ConnectionResetError(104, "reset"), errors.MonoCloudConnectionError, True),
        ],
    )
    async def test_network_errors_are_translated_and_chained(
        self, mocked, client, exc, cls, maybe_sent
    ):
        """Every aiohttp/OS error becomes ours, chained, with whether it may have been sent."""
        mocked.post(f"{BASE}/users/u/phones", exception=exc)
        with pytest.raises(cls) as info:
            await client.users.add_phone("u", PHONE)
        assert info.value.__cause__ is exc
        assert maybe_sent == info.value.maybe_sent
        assert 1 == info.value.attempts


class TestConfiguration:
    def test_env_fallbacks(self, monkeypatch):
        """Domain, key and timeout (milliseconds) come from the environment when not given."""
        monkeypatch.setenv("MONOCLOUD_MANAGEMENT_DOMAIN", "env.monocloud.com")
        monkeypatch.setenv("MONOCLOUD_MANAGEMENT_API_KEY", KEY)
        monkeypatch.setenv("MONOCLOUD_MANAGEMENT_TIMEOUT", "2500")
        client = MonoCloudClient()
        assert ("https://env.monocloud.com/api/", 2.5) == (client.base_url, client.timeout)

    def test_explicit_values_win(self, monkeypatch):
        """Arguments take precedence over the environment."""
        monkeypatch.setenv("MONOCLOUD_MANAGEMENT_DOMAIN", "env.monocloud.com")
        monkeypatch.setenv("MONOCLOUD_MANAGEMENT_TIMEOUT", "2500")
        client = MonoCloudClient("arg.monocloud.com", KEY, timeout=10.0)
        assert ("https://arg.monocloud.com/api/", 10.0) == (client.base_url, client.timeout)

    def test_default_timeout(self, monkeypatch):
        """Without argument or environment the timeout is 10 s."""
        monkeypatch.delenv("MONOCLOUD_MANAGEMENT_TIMEOUT", raising=False)
        assert 10.0 == MonoCloudClient(DOMAIN, KEY).timeout

    @pytest.mark.parametrize(
        ("kwargs", "env", "match"),
        [
            ({"api_key": KEY}, {}, "MONOCLOUD_MANAGEMENT_DOMAIN"),
            ({"domain": DOMAIN}, {}, "MONOCLOUD_MANAGEMENT_API_KEY"),
            ({"domain": "http://acme.com", "api_key": KEY}, {}, "loopback"),
            ({"domain": DOMAIN, "api_key": "k\r\nX: 1"}, {}, "control"),
            ({"domain": DOMAIN, "api_key": KEY, "timeout": 0}, {}, "timeout"),
            ({"domain": DOMAIN, "api_key": KEY, "timeout": float("nan")}, {}, "timeout"),
            ({"domain": DOMAIN, "api_key": KEY, "deadline": -1}, {}, "deadline"),
            ({"domain": DOMAIN, "api_key": KEY, "max_connections": 0}, {}, "max_connections"),
            ({"domain": DOMAIN, "api_key": KEY, "retry": 3}, {}, "retry"),
            ({"domain": DOMAIN, "api_key": KEY, "rate_limiter": object()}, {}, "acquire"),
            (
                {"domain": DOMAIN, "api_key": KEY},
                {"MONOCLOUD_MANAGEMENT_TIMEOUT": "soon"},
                "milliseconds",
            ),
        ],
    )
    def test_invalid(self, monkeypatch, kwargs, env, match):
        """Each invalid setting is a ConfigurationError naming the problem, without the key."""
        for name in ("DOMAIN", "API_KEY", "TIMEOUT"):
            monkeypatch.delenv(f"MONOCLOUD_MANAGEMENT_{name}", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(errors.ConfigurationError, match=match) as info:
            MonoCloudClient(**kwargs)
        assert KEY not in str(info.value)
        assert isinstance(info.value, ValueError)


@pytest.mark.asyncio
class TestLifecycle:
    async def test_injected_session_is_left_open(self, mocked, user_json):
        """A session the caller passed in is used and never closed."""
        mocked.post(f"{BASE}/users/u/phones", payload=user_json)
        async with aiohttp.ClientSession() as session:
            async with MonoCloudClient(DOMAIN, KEY, session=session) as client:
                await client.users.add_phone("u", PHONE)
            assert not session.closed

    async def test_closed_client_refuses_work(self):
        """After aclose(), calls raise RuntimeError; a second aclose() is a no-op."""
        client = MonoCloudClient(DOMAIN, KEY)
        await client.aclose()
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.users.add_phone("u", PHONE)
        with pytest.raises(RuntimeError, match="closed"):
            async with client:
                pass

    async def test_session_is_created_lazily_and_closed(self, mocked, user_json):
        """No session before the first call; aclose() closes the one it created."""
        mocked.get(f"{BASE}/users/u", payload=user_json)
        client = MonoCloudClient(DOMAIN, KEY)
        assert client._transport.session is None
        await client.users.get_user("u")
        session = client._transport.session
        assert session is not None
        await client.aclose()
        assert session.closed

    async def test_unclosed_client_warns(self, mocked, user_json):
        """Garbage-collecting a client with its own open pool emits a ResourceWarning."""
        mocked.get(f"{BASE}/users/u", payload=user_json)
        client = MonoCloudClient(DOMAIN, KEY)
        await client.users.get_user("u")
        session = client._transport.session
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del client
            gc.collect()
        assert any(
            issubclass(w.category, ResourceWarning) and "MonoCloudClient" in str(w.message)
            for w in caught
        )
        await session.close()


@pytest.mark.asyncio
class TestSecrets:
    async def test_key_never_shown(self, mocked, caplog):
        """The key is absent from repr, error text and DEBUG logs."""
        caplog.set_level(logging.DEBUG, logger="monocloud_async")
        mocked.post(
            f"{BASE}/users/u/phones",
            status=401,
            body=json.dumps({"title": "Unauthorized", "status": 401, "detail": f"bad key {KEY}"}),
            headers={"Content-Type": "application/problem+json"},
        )
        async with MonoCloudClient(DOMAIN, KEY, retry=RetryPolicy.none()) as client:
            assert KEY not in repr(client)
            assert KEY not in repr(client.users)
            with pytest.raises(errors.UnauthorizedError) as info:
                await client.users.add_phone("u", PHONE)
        assert "POST users/u/phones -> 401" in caplog.text
        for text in (str(info.value), repr(info.value), caplog.text):
            assert PHONE not in text
        # The server echoed the key in its detail: the problem keeps data, the message may too,
        # but our own texts must not add it.
        assert KEY not in repr(client)

    async def test_logs_mask_phone_numbers(self, mocked, caplog, user_json):
        """Retry and reconciliation logs show only the last four digits."""
        caplog.set_level(logging.DEBUG, logger="monocloud_async")
        mocked.post(f"{BASE}/users/u/phones", status=503)
        mocked.post(f"{BASE}/users/u/phones", payload=user_json)
        async with MonoCloudClient(
            DOMAIN, KEY, retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.001)
        ) as client:
            await client.users.add_phone("u", PHONE)
        assert "retrying" in caplog.text
        assert PHONE not in caplog.text
        assert KEY not in caplog.text


@pytest.mark.asyncio
class TestEndToEnd:
    async def test_real_socket(self, user_json):
        """add_phone over a real socket to an aiohttp app on 127.0.0.1."""
        received: list[tuple[str, str, dict[str, str], bytes]] = []

        async def handler(request: web.Request) -> web.Response:
            received.append(
                (request.method, request.raw_path, dict(request.headers), await request.read())
            )
            body = dict(user_json, user_id=request.match_info["user_id"])
            return web.json_response(body)

        app = web.Application()
        app.router.add_post("/api/users/{user_id}/phones", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with MonoCloudClient(f"http://127.0.0.1:{port}", KEY) as client:
                user = await client.users.add_phone("a/b", PHONE, skip_restriction_checks=True)
        finally:
            await runner.cleanup()
        assert "a/b" == user.user_id
        method, path, headers, body = received[0]
        assert ("POST", "/api/users/a%2Fb/phones", KEY) == (method, path, headers["X-API-Key"])
        assert {
            "phone_number": PHONE,
            "is_verified": False,
            "skip_restriction_checks": True,
        } == json.loads(body)
