"""End to end: the real MonoCloudClient against FakeMonoCloud over real sockets (testing kit)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import warnings

import pytest
from helpers import FAST

from monocloud_async import MonoCloudClient, PhoneAssignment, RetryPolicy, User, errors
from monocloud_async._sansio import Request
from monocloud_async.models import IdentityError
from monocloud_async.testing import FakeMonoCloud

PHONE = "+919988776655"
OTHER_PHONE = "+14155550123"
AGENT = re.compile(r"monocloud-async/\S+ Python/\d+\.\d+\.\d+\S* aiohttp/\S+")
HEX_ID = re.compile(r"[0-9a-f]{32}")


def stored_phones(fake, user_id):
    return fake.users[user_id]["phone_numbers"]


def crafted_add_phone(user_id, body):
    """An add-phone request that skips the SDK's own validation (to reach the fake's)."""
    return Request(
        method="POST",
        path=f"users/{user_id}/phones",
        body=body,
        operation="add_phone",
        phone_number=None,
    )


@pytest.mark.asyncio
class TestAddPhone:
    async def test_stores_the_phone_and_returns_the_user(self, fake, client, user_id):
        """add_phone appends the number on the server and returns the updated user."""
        user = await client.users.add_phone(user_id, PHONE)

        assert isinstance(user, User)
        assert user_id == user.user_id
        [stored] = stored_phones(fake, user_id)
        assert (PHONE, True, False, None) == (
            stored["phone"],
            stored["primary"],
            stored["verified"],
            stored["verification_source"],
        )
        [returned] = user.phone_numbers
        assert (stored["id"], PHONE, True, False) == (
            returned.id,
            returned.phone,
            returned.primary,
            returned.verified,
        )

    async def test_only_the_first_phone_is_primary(self, fake, client, user_id):
        """The first number becomes primary; a second one is appended as not primary."""
        await client.users.add_phone(user_id, PHONE)
        user = await client.users.add_phone(user_id, OTHER_PHONE)

        assert [(PHONE, True), (OTHER_PHONE, False)] == [
            (p.phone, p.primary) for p in user.phone_numbers
        ]
        assert [(PHONE, True), (OTHER_PHONE, False)] == [
            (p["phone"], p["primary"]) for p in stored_phones(fake, user_id)
        ]

    @pytest.mark.parametrize(
        ("is_verified", "source"), [(True, "monocloud"), (False, None)], ids=["verified", "not"]
    )
    async def test_verified_flag_is_stored(self, fake, client, user_id, is_verified, source):
        """is_verified reaches the server and comes back on the returned phone."""
        user = await client.users.add_phone(user_id, PHONE, is_verified=is_verified)

        [stored] = stored_phones(fake, user_id)
        assert (is_verified, source) == (stored["verified"], stored["verification_source"])
        assert (is_verified, source) == (
            user.phone_numbers[0].verified,
            user.phone_numbers[0].verification_source,
        )

    async def test_same_number_on_two_users(self, fake, client):
        """A number one user has can still be given to another user."""
        first, second = fake.add_user(), fake.add_user()

        await client.users.add_phone(first, PHONE)
        user = await client.users.add_phone(second, PHONE)

        assert [PHONE] == [p.phone for p in user.phone_numbers]
        assert [PHONE] == [p["phone"] for p in stored_phones(fake, first)]

    async def test_one_request_per_call(self, fake, client, user_id, events):
        """A successful call sends exactly one request and reports one successful attempt."""
        await client.users.add_phone(user_id, PHONE)

        assert 1 == fake.stats.requests
        assert [("add_phone", 1, "success", 200)] == [
            (e.operation, e.attempt, e.outcome, e.status) for e in events
        ]


@pytest.mark.asyncio
class TestGetUser:
    async def test_returns_the_stored_user(self, fake, client, user_id):
        """get_user decodes the fake's full User, the same as stored."""
        stored = fake.users[user_id]

        user = await client.users.get_user(user_id)

        assert (
            stored["user_id"],
            stored["emails"][0]["email"],
            stored["username"]["username"],
            stored["claims"],
            stored["creation_time"],
            stored["last_known_city"],
            [],
        ) == (
            user.user_id,
            user.emails[0].email,
            user.username.username if user.username else None,
            user.claims,
            user.creation_time,
            user.last_known_city,
            user.phone_numbers,
        )

    async def test_sees_phones_added_before(self, fake, client, user_id):
        """A phone added through the client is on the user read back."""
        added = await client.users.add_phone(user_id, PHONE, is_verified=True)

        user = await client.users.get_user(user_id)

        assert added.phone_numbers == user.phone_numbers
        assert user.has_phone(PHONE)

    async def test_unknown_fields_are_tolerated(self, fake, client):
        """Fields the SDK does not know about do not break decoding."""
        user_id = fake.add_user(brand_new_field={"nested": [1, 2]}, disabled=True)

        user = await client.users.get_user(user_id)

        assert (user_id, True) == (user.user_id, user.disabled)


@pytest.mark.asyncio
class TestErrors:
    async def test_wrong_key_is_unauthorized(self, fake, user_id):
        """A wrong API key is a 401 UnauthorizedError, not retried, and the key is not shown."""
        secret = "wrong-key-0123456789"
        async with MonoCloudClient(fake.domain, secret, retry=FAST) as client:
            with pytest.raises(errors.UnauthorizedError) as caught:
                await client.users.add_phone(user_id, PHONE)

        exc = caught.value
        assert (401, 1, 1) == (exc.status, exc.attempts, fake.stats.requests)
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert [] == stored_phones(fake, user_id)

    async def test_unknown_user_is_not_found(self, fake, client):
        """An unknown user is a 404 NotFoundError for add_phone and get_user, not retried."""
        with pytest.raises(errors.NotFoundError) as on_add:
            await client.users.add_phone("nobody", PHONE)
        with pytest.raises(errors.NotFoundError) as on_get:
            await client.users.get_user("nobody")

        assert (404, 1) == (on_add.value.status, on_add.value.attempts)
        assert (404, 1) == (on_get.value.status, on_get.value.attempts)
        assert 2 == fake.stats.requests
        assert on_get.value.problem is not None
        assert "User 'nobody' was not found." == on_get.value.problem.detail

    async def test_validation_error_from_a_crafted_request(self, fake, client, user_id):
        """A body the fake rejects is a 422 with validation-error field messages.

        The SDK validates numbers before any I/O, so the body is crafted below its public
        surface and sent through the client's own engine, transport and error mapping.
        """
        request = crafted_add_phone(user_id, b'{"phone_number":"0044 20 7946 0000"}')

        with pytest.raises(errors.UnprocessableEntityError) as caught:
            await client._engine.call(request)

        exc = caught.value
        assert {"phone_number": ["The phone_number field must be an E.164 phone number."]} == (
            exc.errors
        )
        assert exc.problem is not None
        assert "https://httpstatuses.io/422#validation-error" == exc.problem.type
        assert (422, 1) == (exc.status, exc.attempts)
        assert [] == stored_phones(fake, user_id)

    async def test_validation_error_is_not_reconciled_with_exist_ok(self, fake, client, user_id):
        """exist_ok turns only duplicates into success: a validation 422 is still raised."""
        request = crafted_add_phone(user_id, b'{"phone_number":12}')

        with pytest.raises(errors.UnprocessableEntityError) as caught:
            await client._engine.call(request, exist_ok=True)

        assert {"phone_number": ["The phone_number field must be a string."]} == (
            caught.value.errors
        )
        assert ["POST"] == [r.method for r in fake.requests]

    @pytest.mark.parametrize(
        "phone", ["+9\u0661\u0662\u0663\u0664\u0665\u0666", "+9\uff11\uff12\uff13\uff14"]
    )
    async def test_non_ascii_digits_are_rejected_before_io(self, fake, client, user_id, phone):
        """A number with non-ASCII digits is an InvalidRequestError and nothing is sent."""
        with pytest.raises(errors.InvalidRequestError):
            await client.users.add_phone(user_id, phone)

        assert 0 == fake.stats.requests

    async def test_duplicate_is_identity_error(self, fake, client, user_id):
        """A number the user has is a 422 DuplicatePhoneNumber; the number is not shown."""
        await client.users.add_phone(user_id, PHONE)

        with pytest.raises(errors.UnprocessableEntityError) as caught:
            await client.users.add_phone(user_id, PHONE)

        exc = caught.value
        assert (422, 1) == (exc.status, exc.attempts)
        assert exc.problem is not None
        assert "https://httpstatuses.io/422#identity-validation-error" == exc.problem.type
        assert isinstance(exc.errors, list)
        assert ["DuplicatePhoneNumber"] == [e.code for e in exc.errors]
        assert all(isinstance(e, IdentityError) for e in exc.errors)
        assert "DuplicatePhoneNumber" in str(exc)
        for text in (str(exc), repr(exc), repr(exc.errors), repr(exc.problem)):
            assert PHONE not in text
            assert PHONE[1:] not in text
        assert 1 == len(stored_phones(fake, user_id))

    async def test_request_id_reaches_the_error(self, fake, client, events):
        """The response's X-Request-Id is the error's request_id and the attempt event's."""
        with pytest.raises(errors.NotFoundError) as first:
            await client.users.get_user("nobody")
        with pytest.raises(errors.NotFoundError) as second:
            await client.users.add_phone("nobody", PHONE)

        ids = [first.value.request_id, second.value.request_id]
        assert all(rid is not None and HEX_ID.fullmatch(rid) for rid in ids)
        assert ids[0] != ids[1]
        assert ids == [first.value.headers["X-Request-Id"], second.value.headers["X-Request-Id"]]
        assert ids == [e.request_id for e in events]
        assert first.value.problem is not None
        assert ids[0] == first.value.problem.extensions["traceId"].split("-")[1]

    async def test_message_quotes_the_request_id_verbatim(self, fake, client):
        """An error message quotes the server's request id unchanged (for support tickets)."""
        ids, mangled = [], []
        for _ in range(20):
            with pytest.raises(errors.NotFoundError) as caught:
                await client.users.get_user("nobody")
            rid = caught.value.request_id
            ids.append(rid)
            if f"(request id {rid})" not in str(caught.value):
                mangled.append((rid, str(caught.value)))

        # Ids holding a long run of decimal digits look like phone numbers to a masker.
        assert any(re.search(r"[0-9]{8}", rid or "") for rid in ids)
        assert [] == mangled


@pytest.mark.asyncio
class TestExistOk:
    async def test_duplicate_returns_the_user(self, fake, client, user_id):
        """With exist_ok a number the user has returns the current user after a read-back."""
        await client.users.add_phone(user_id, PHONE)

        user = await client.users.add_phone(user_id, PHONE, exist_ok=True)

        assert (user_id, [PHONE]) == (user.user_id, [p.phone for p in user.phone_numbers])
        assert ["POST", "POST", "GET"] == [r.method for r in fake.requests]
        assert f"/api/users/{user_id}" == fake.requests[2].path
        assert 1 == len(stored_phones(fake, user_id))

    async def test_new_number_is_a_plain_add(self, fake, client, user_id):
        """With exist_ok a new number is added with one request and no read-back."""
        user = await client.users.add_phone(user_id, PHONE, exist_ok=True)

        assert [PHONE] == [p.phone for p in user.phone_numbers]
        assert ["POST"] == [r.method for r in fake.requests]

    async def test_bulk_duplicate_counts_the_read_back(self, fake, client, user_id):
        """add_phones(exist_ok=True) reports a duplicate as ok, with 2 requests sent."""
        await client.users.add_phone(user_id, PHONE)

        report = await client.users.add_phones(
            [PhoneAssignment(user_id, PHONE)], exist_ok=True
        ).collect()

        [result] = report.results
        assert (True, 2, [PHONE]) == (
            result.ok,
            result.attempts,
            [p.phone for p in result.user.phone_numbers] if result.user else None,
        )

    async def test_unknown_user_is_still_not_found(self, fake, client):
        """exist_ok does not hide a 404."""
        with pytest.raises(errors.NotFoundError):
            await client.users.add_phone("nobody", PHONE, exist_ok=True)

        assert 1 == fake.stats.requests


@pytest.mark.asyncio
class TestWire:
    async def test_add_phone_headers_and_body(self, fake, client, user_id):
        """add_phone sends the key, a User-Agent, JSON content and the exact JSON body."""
        await client.users.add_phone(user_id, PHONE, skip_restriction_checks=True)

        [sent] = fake.requests
        assert ("POST", f"/api/users/{user_id}/phones") == (sent.method, sent.path)
        assert fake.api_key == sent.headers["X-API-Key"]
        assert AGENT.fullmatch(sent.headers["User-Agent"])
        assert "application/json" == sent.headers["Content-Type"]
        assert {
            "phone_number": PHONE,
            "is_verified": False,
            "skip_restriction_checks": True,
        } == sent.json

    async def test_get_user_sends_no_body(self, fake, client, user_id):
        """get_user is a GET with the key and no body."""
        await client.users.get_user(user_id)

        [sent] = fake.requests
        assert ("GET", f"/api/users/{user_id}", None) == (sent.method, sent.path, sent.json)
        assert fake.api_key == sent.headers["X-API-Key"]
        assert "content-type" not in sent.headers

    async def test_custom_user_agent(self, fake, user_id):
        """user_agent= replaces the default User-Agent on the wire."""
        async with MonoCloudClient(fake.domain, fake.api_key, user_agent="acme-sync/2.1") as c:
            await c.users.get_user(user_id)

        assert "acme-sync/2.1" == fake.requests[0].headers["User-Agent"]

    @pytest.mark.parametrize(
        ("odd_id", "segment"),
        [
            ("a/b", "a%2Fb"),
            ("x y", "x%20y"),
            ("a%2Fb", "a%252Fb"),
            ("q?x=1#f", "q%3Fx%3D1%23f"),
            ("ünï", "%C3%BCn%C3%AF"),
            ("用户", "%E7%94%A8%E6%88%B7"),
            ("..a", "..a"),
        ],
        ids=["slash", "space", "encoded-slash", "query-fragment", "latin", "cjk", "dots"],
    )
    async def test_odd_user_ids_reach_their_user(self, fake, client, odd_id, segment):
        """Odd user ids travel percent-encoded as one segment and reach exactly that user."""
        fake.add_user(odd_id)
        decoy = "a/b" if odd_id == "a%2Fb" else "a%2Fb"
        fake.add_user(decoy)

        user = await client.users.add_phone(odd_id, PHONE)
        read = await client.users.get_user(odd_id)

        assert [f"/api/users/{segment}/phones", f"/api/users/{segment}"] == [
            r.path for r in fake.requests
        ]
        assert (odd_id, odd_id) == (user.user_id, read.user_id)
        assert [PHONE] == [p["phone"] for p in stored_phones(fake, odd_id)]
        assert [] == stored_phones(fake, decoy)

    @pytest.mark.parametrize("bad_id", ["", ".", ".."])
    async def test_path_changing_ids_send_nothing(self, fake, client, bad_id):
        """Ids that would change the path are refused before any request."""
        with pytest.raises(errors.InvalidRequestError):
            await client.users.add_phone(bad_id, PHONE)
        with pytest.raises(errors.InvalidRequestError):
            await client.users.get_user(bad_id)

        assert 0 == fake.stats.requests

    async def test_logs_show_no_key_and_no_full_number(self, fake, client, user_id, caplog):
        """Debug logs of adds, duplicates and read-backs never show the key or a full number."""
        caplog.set_level(logging.DEBUG, logger="monocloud_async")

        await client.users.add_phone(user_id, PHONE)
        with pytest.raises(errors.UnprocessableEntityError):
            await client.users.add_phone(user_id, PHONE)
        await client.users.add_phone(user_id, PHONE, exist_ok=True)

        assert f"users/{user_id}/phones" in caplog.text
        assert PHONE not in caplog.text
        assert PHONE[1:] not in caplog.text
        assert fake.api_key not in caplog.text


@pytest.fixture(name="teardown_probe")
def _teardown_probe():
    """Set up before and torn down after the plugin's fixtures: checks what they left."""
    seen: dict[str, object] = {}
    yield seen
    client, fake, connector = seen["client"], seen["fake"], seen["connector"]
    assert isinstance(client, MonoCloudClient)
    assert isinstance(fake, FakeMonoCloud)
    assert client.closed
    assert connector.closed  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        _ = fake.domain
    gc.collect()


@pytest.mark.asyncio
class TestPytestPlugin:
    async def test_monocloud_client_talks_to_fake_monocloud(
        self, teardown_probe, fake_monocloud, monocloud_client
    ):
        """The plugin's client is pointed at the plugin's fake, and both are closed after."""
        user_id = fake_monocloud.add_user()

        user = await monocloud_client.users.add_phone(user_id, PHONE)
        with pytest.raises(errors.NotFoundError):
            await monocloud_client.users.get_user("nobody")

        assert f"{fake_monocloud.domain}/api/" == monocloud_client.base_url
        assert [PHONE] == [p.phone for p in user.phone_numbers]
        assert fake_monocloud.api_key == fake_monocloud.requests[0].headers["X-API-Key"]
        teardown_probe.update(
            client=monocloud_client,
            fake=fake_monocloud,
            connector=monocloud_client._transport.session.connector,
        )


async def until(predicate, seconds=2.0):
    """Poll ``predicate`` every 5 ms for up to ``seconds``; return its last value."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            break
        await asyncio.sleep(0.005)
    return predicate()


@contextlib.contextmanager
def reports():
    """Collect warnings and event-loop exception reports (unclosed sessions) while active."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(str(context.get("message"))))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield seen
            gc.collect()
        seen.extend(str(w.message) for w in caught)
    finally:
        loop.set_exception_handler(previous)


@pytest.mark.asyncio
class TestShutdown:
    async def test_client_then_fake_close_cleanly(self):
        """Closing the client (twice) and then the fake after traffic leaves nothing behind."""
        with reports() as seen:
            fake = FakeMonoCloud()
            await fake.start()
            client = MonoCloudClient(fake.domain, fake.api_key, retry=FAST)
            await client.users.add_phone(fake.add_user(), PHONE)
            connector = client._transport.session.connector

            await client.aclose()
            await client.aclose()
            await fake.aclose()
            del client, fake

        assert connector.closed
        assert [] == seen

    async def test_fake_then_client_close_cleanly(self):
        """A fake gone first makes calls fail with a connection error; closing is still clean."""
        with reports() as seen:
            async with FakeMonoCloud() as fake:
                client = MonoCloudClient(fake.domain, fake.api_key, retry=RetryPolicy.none())
                user_id = fake.add_user()
                await client.users.add_phone(user_id, PHONE)
            with pytest.raises(errors.MonoCloudConnectionError) as caught:
                await client.users.add_phone(user_id, OTHER_PHONE)
            await client.aclose()
            del client, fake

        assert caught.value.__cause__ is not None
        assert [] == seen

    async def test_fake_closing_mid_call(self):
        """A fake closing under an in-flight call ends the call at once, cleanly."""
        with reports() as seen:
            async with FakeMonoCloud() as fake:
                user_id = fake.add_user()
                fake.delay(5)
                async with MonoCloudClient(
                    fake.domain, fake.api_key, retry=RetryPolicy.none()
                ) as client:
                    call = asyncio.create_task(client.users.add_phone(user_id, PHONE))
                    assert await until(lambda: fake.stats.in_flight == 1)
                    started = asyncio.get_running_loop().time()
                    await fake.aclose()
                    with pytest.raises(errors.MonoCloudConnectionError):
                        await call
                    waited = asyncio.get_running_loop().time() - started
            del client

        assert waited < 1.0
        assert [] == stored_phones(fake, user_id)
        assert [] == seen
