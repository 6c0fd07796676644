"""Tests for monocloud_async.testing: the fake Management API, over real sockets."""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import json
import logging
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict
from yarl import URL

import monocloud_async
import monocloud_async.testing
from monocloud_async.testing import FakeMonoCloud, FakeStats, RecordedRequest

KEY = "test-key"
SAMPLE = json.loads((Path(__file__).parent / "samples" / "user.json").read_text())
NULLABLE = {
    "password_updated_at",
    "block_until",
    "last_sign_in_attempt",
    "last_sign_in_success",
    "last_activity",
    "last_sign_in_attempt_ip",
    "last_sign_in_success_ip",
    "last_known_city",
    "last_known_country",
    "last_known_region",
    "username",
}
RATE_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
)


class Answer(NamedTuple):
    """What a request to the fake got back; ``status`` is None when the connection dropped."""

    status: int | None
    headers: CIMultiDict[str]
    body: Any


class Api:
    """Plain aiohttp calls to a fake, with the path given percent-encoded.

    Fault tests use POST: aiohttp re-sends an idempotent request (GET, DELETE) once by itself
    when a reused connection drops, which would hide a disconnect.
    """

    def __init__(self, session: aiohttp.ClientSession, fake: FakeMonoCloud) -> None:
        self.session = session
        self.fake = fake

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        data: bytes | None = None,
        key: str | None = KEY,
        key_header: str = "X-API-Key",
    ) -> Answer:
        headers = {} if key is None else {key_header: key}
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = URL(self.fake.domain + path, encoded=True)
        try:
            async with self.session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
                body = json.loads(text) if text else None
                return Answer(resp.status, CIMultiDict(resp.headers), body)
        except aiohttp.ServerDisconnectedError:
            return Answer(None, CIMultiDict(), None)

    async def add_phone(self, user_id: str, phone: str = "+447700900123", **fields: Any) -> Answer:
        return await self.call(
            "POST",
            f"/api/users/{quote(user_id, safe='')}/phones",
            body={"phone_number": phone, **fields},
        )

    async def get_user(self, user_id: str, **kwargs: Any) -> Answer:
        return await self.call("GET", f"/api/users/{quote(user_id, safe='')}", **kwargs)


@pytest_asyncio.fixture(name="session")
async def _session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(name="api")
def _api(session, fake_monocloud):
    return Api(session, fake_monocloud)


@pytest.fixture(name="fake")
def _fake(fake_monocloud):
    return fake_monocloud


def phone_entry(phone: str, *, primary: bool = False, verified: bool = False) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "phone": phone,
        "primary": primary,
        "verified": verified,
        "source": "monocloud",
        "verification_source": "monocloud" if verified else None,
    }


def problem_members(body: dict[str, Any]) -> list[str]:
    return sorted(body)


async def wait_for(predicate) -> bool:
    """Poll *predicate* for up to two seconds; return its last value."""
    for _ in range(400):
        if predicate():
            break
        await asyncio.sleep(0.005)
    return predicate()


class TestPublicSurface:
    def test_all_is_sorted_and_complete(self):
        """__all__ lists the public names, sorted."""
        expected = ["FakeMonoCloud", "FakeStats", "RecordedRequest"]

        assert expected == monocloud_async.testing.__all__

    def test_does_not_import_pytest(self):
        """Importing the testing kit does not import pytest."""
        code = "import sys, monocloud_async.testing; print('pytest' in sys.modules)"
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )

        assert "False" == out.stdout.strip()


@pytest.mark.asyncio
class TestLifecycle:
    async def test_serves_on_loopback_with_a_free_port(self, fake, api):
        """domain is an http://127.0.0.1 URL with a real port the API answers on."""
        user_id = fake.add_user()

        answer = await api.get_user(user_id)

        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", fake.domain)
        assert 200 == answer.status

    async def test_domain_needs_a_running_server(self):
        """domain raises RuntimeError before start and after aclose."""
        fake = FakeMonoCloud()

        with pytest.raises(RuntimeError, match="not running"):
            _ = fake.domain
        async with fake:
            pass
        with pytest.raises(RuntimeError, match="not running"):
            _ = fake.domain

    async def test_start_twice_raises(self):
        """A second start() while running raises RuntimeError."""
        async with FakeMonoCloud() as fake:
            with pytest.raises(RuntimeError, match="already running"):
                await fake.start()

    async def test_aclose_is_idempotent_and_restartable(self, session):
        """aclose() twice is fine, and the fake can start again keeping its users."""
        fake = FakeMonoCloud()
        await fake.start()
        user_id = fake.add_user()
        await fake.aclose()
        await fake.aclose()
        await fake.start()
        try:
            answer = await Api(session, fake).get_user(user_id)
        finally:
            await fake.aclose()

        assert 200 == answer.status

    async def test_repr_is_short_and_hides_the_key(self):
        """repr() names the URL and user count, never the API key."""
        fake = FakeMonoCloud("secret-key")

        assert "<FakeMonoCloud not running users=0>" == repr(fake)
        async with fake:
            fake.add_user()
            assert f"<FakeMonoCloud {fake.domain} users=1>" == repr(fake)

    async def test_unclosed_fake_warns(self):
        """A running fake that is garbage-collected emits a ResourceWarning."""
        fake = FakeMonoCloud()
        fake._runner = object()

        with pytest.warns(ResourceWarning, match="never closed"):
            del fake

    async def test_shutdown_with_requests_in_flight_is_clean(self, session, caplog):
        """aclose() with requests in flight drops them at once, leaving no task, warning or log."""
        caplog.set_level(logging.DEBUG)
        fake = FakeMonoCloud()
        await fake.start()
        user_id = fake.add_user()
        fake.delay(30)
        api = Api(session, fake)
        calls = [asyncio.create_task(api.add_phone(user_id, f"+4477009001{i}")) for i in range(3)]
        assert await wait_for(lambda: fake.stats.in_flight == 3)

        started = time.monotonic()
        await fake.aclose()
        answers = await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
        gc.collect()

        assert [None, None, None] == [answer.status for answer in answers]
        assert elapsed < 1.0
        assert 0 == fake.stats.in_flight
        assert [] == [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert [] == fake.users[user_id]["phone_numbers"]


@pytest.mark.asyncio
class TestAddUser:
    async def test_user_has_every_field_of_the_example(self, fake):
        """A generated user has the example response's keys, with the same JSON types."""
        user = fake.users[fake.add_user()]

        assert sorted(SAMPLE) == sorted(user)
        for key, value in SAMPLE.items():
            if user[key] is None:
                assert key in NULLABLE
            else:
                assert type(value) is type(user[key]), key

    @pytest.mark.parametrize("field", ["emails", "passkeys", "connections", "external_providers"])
    async def test_nested_entries_have_the_example_shape(self, fake, field):
        """Entries of the user's lists have the example's keys and types."""
        user = fake.users[fake.add_user()]
        expected = {key: type(value) for key, value in SAMPLE[field][0].items()}

        assert expected == {key: type(value) for key, value in user[field][0].items()}

    async def test_ids_look_like_the_services(self, fake):
        """user_id is a 21-character URL-safe id and identifier ids are UUID4s."""
        user = fake.users[fake.add_user()]
        identifiers = [user["emails"][0]["id"], user["username"]["id"]]

        assert re.fullmatch(r"[A-Za-z0-9_-]{21}", user["user_id"])
        assert [4, 4] == [uuid.UUID(value).version for value in identifiers]
        assert "@" in user["emails"][0]["email"]
        assert [] == user["phone_numbers"]

    async def test_same_seed_same_users(self):
        """Two fakes with one seed generate the same ids; another seed does not."""
        one, two, other = FakeMonoCloud(seed=3), FakeMonoCloud(seed=3), FakeMonoCloud(seed=4)

        ids = [one.add_user() for _ in range(3)]

        assert ids == [two.add_user() for _ in range(3)]
        assert ids != [other.add_user() for _ in range(3)]

    async def test_fields_override_and_extend(self, fake):
        """Keyword fields replace top-level fields or add new ones; user_id is respected."""
        user_id = fake.add_user("my-id", disabled=True, claims={"name": "X"}, brand_new=1)
        user = fake.users[user_id]

        assert ("my-id", True, {"name": "X"}, 1) == (
            user["user_id"],
            user["disabled"],
            user["claims"],
            user["brand_new"],
        )

    async def test_overrides_are_copied(self, fake):
        """The stored user does not share mutable overrides with the caller."""
        phones = [phone_entry("+447700900001")]
        user_id = fake.add_user(phone_numbers=phones)

        phones.clear()

        assert 1 == len(fake.users[user_id]["phone_numbers"])

    @pytest.mark.parametrize("user_id", ["", "taken"], ids=["empty", "duplicate"])
    async def test_bad_user_id_raises(self, fake, user_id):
        """An empty or already used user_id raises ValueError."""
        fake.add_user("taken")

        with pytest.raises(ValueError):
            fake.add_user(user_id)


@pytest.mark.asyncio
class TestAddPhone:
    async def test_stores_the_phone_and_returns_the_user(self, fake, api):
        """A valid request appends the phone and answers 200 with the stored User."""
        user_id = fake.add_user()

        answer = await api.add_phone(user_id, "+919988776655")
        phone = answer.body["phone_numbers"][0]

        assert 200 == answer.status
        assert "application/json" in answer.headers["Content-Type"]
        assert fake.users[user_id] == answer.body
        assert {
            "id": phone["id"],
            "phone": "+919988776655",
            "primary": True,
            "verified": False,
            "source": "monocloud",
            "verification_source": None,
        } == phone
        assert 4 == uuid.UUID(phone["id"]).version

    async def test_only_the_first_phone_is_primary(self, fake, api):
        """The first phone of a user becomes primary, later ones do not."""
        user_id = fake.add_user()

        await api.add_phone(user_id, "+447700900001")
        answer = await api.add_phone(user_id, "+447700900002")

        assert [True, False] == [p["primary"] for p in answer.body["phone_numbers"]]

    async def test_verified_phone(self, fake, api):
        """is_verified marks the phone verified by monocloud."""
        user_id = fake.add_user()

        answer = await api.add_phone(user_id, is_verified=True, skip_restriction_checks=True)
        phone = answer.body["phone_numbers"][0]

        assert (True, "monocloud") == (phone["verified"], phone["verification_source"])

    async def test_bumps_last_updated(self, fake, api):
        """Adding a phone sets last_updated to the current epoch second."""
        user_id = fake.add_user(last_updated=0)
        before = int(time.time())

        answer = await api.add_phone(user_id)

        assert before <= answer.body["last_updated"] <= int(time.time())

    @pytest.mark.parametrize(
        "user_id",
        ["a/b", "with space", "ünïcödé", "100%", "a?b#c", "..x", "+plus"],
    )
    async def test_percent_encoded_user_ids_are_decoded(self, fake, api, user_id):
        """User ids with reserved or non-ASCII characters reach the right user."""
        fake.add_user(user_id)

        answer = await api.add_phone(user_id)

        assert (200, user_id) == (answer.status, answer.body["user_id"])
        assert 1 == len(fake.users[user_id]["phone_numbers"])

    async def test_dot_segments_are_resolved_like_a_real_server(self, fake, api):
        """An unescaped '..' user id climbs out of the users path and matches nothing."""
        fake.add_user("..")

        answer = await api.call("POST", "/api/users/../phones", body={"phone_number": "+4477"})

        assert (404, "/api/users/../phones") == (answer.status, answer.body["instance"])

    async def test_unknown_user_is_404_problem(self, fake, api):
        """An unknown user gets a 404 problem+json with every member and a traceId."""
        answer = await api.add_phone("nobody")

        assert 404 == answer.status
        assert "application/problem+json" in answer.headers["Content-Type"]
        assert ["detail", "instance", "status", "title", "traceId", "type"] == problem_members(
            answer.body
        )
        assert ("https://httpstatuses.io/404", 404, "/api/users/nobody/phones") == (
            answer.body["type"],
            answer.body["status"],
            answer.body["instance"],
        )

    @pytest.mark.parametrize(
        ("data", "fields"),
        [
            pytest.param(b"{not json", ["body"], id="not-json"),
            pytest.param(b"", ["body"], id="empty"),
            pytest.param(b"[]", ["body"], id="array"),
            pytest.param(b"{}", ["phone_number"], id="missing"),
            pytest.param(b'{"phone_number": null}', ["phone_number"], id="null"),
            pytest.param(b'{"phone_number": 447700900123}', ["phone_number"], id="number"),
            pytest.param(b'{"phone_number": "447700900123"}', ["phone_number"], id="no-plus"),
            pytest.param(b'{"phone_number": "+0447700900"}', ["phone_number"], id="zero"),
            pytest.param(b'{"phone_number": "+4"}', ["phone_number"], id="short"),
            pytest.param(b'{"phone_number": "+1234567890123456"}', ["phone_number"], id="long"),
            pytest.param(b'{"phone_number": "+44 7700 900"}', ["phone_number"], id="spaces"),
            pytest.param(b'{"phone_number": "+44770\\n"}', ["phone_number"], id="newline"),
            pytest.param(
                b'{"phone_number": "+4\\u0664\\u0667\\u0667\\u0660\\u0660"}',
                ["phone_number"],
                id="arabic-indic-digits",
            ),
            pytest.param(
                b'{"phone_number": "+447700900123", "is_verified": "yes"}',
                ["is_verified"],
                id="is_verified",
            ),
            pytest.param(
                b'{"phone_number": "x", "skip_restriction_checks": 1}',
                ["phone_number", "skip_restriction_checks"],
                id="two-fields",
            ),
        ],
    )
    async def test_invalid_body_is_422_validation_error(self, fake, api, data, fields):
        """A malformed body gets 422 validation-error naming each bad field."""
        user_id = fake.add_user()

        answer = await api.call("POST", f"/api/users/{user_id}/phones", data=data)

        assert (422, "https://httpstatuses.io/422#validation-error") == (
            answer.status,
            answer.body["type"],
        )
        assert fields == sorted(answer.body["errors"])
        assert all(isinstance(m, str) for msgs in answer.body["errors"].values() for m in msgs)
        assert [] == fake.users[user_id]["phone_numbers"]

    @pytest.mark.parametrize("phone", ["+12", "+123456789012345"], ids=["2-digits", "15-digits"])
    async def test_e164_bounds_are_accepted(self, fake, api, phone):
        """Numbers of 2 and 15 digits are valid E.164."""
        answer = await api.add_phone(fake.add_user(), phone)

        assert 200 == answer.status

    async def test_duplicate_is_422_identity_error(self, fake, api):
        """A number the user already has gets 422 identity-validation-error DuplicatePhoneNumber."""
        user_id = fake.add_user()
        await api.add_phone(user_id, "+447700900123")

        answer = await api.add_phone(user_id, "+447700900123", is_verified=True)

        assert (422, "https://httpstatuses.io/422#identity-validation-error") == (
            answer.status,
            answer.body["type"],
        )
        assert ["DuplicatePhoneNumber"] == [e["code"] for e in answer.body["errors"]]
        assert isinstance(answer.body["errors"][0]["description"], str)
        assert 1 == len(fake.users[user_id]["phone_numbers"])

    async def test_same_number_on_another_user_is_fine(self, fake, api):
        """Duplicates are per user: two users may hold one number."""
        await api.add_phone(fake.add_user(), "+447700900123")

        answer = await api.add_phone(fake.add_user(), "+447700900123")

        assert 200 == answer.status


@pytest.mark.asyncio
class TestAuthentication:
    @pytest.mark.parametrize(
        ("key", "status"),
        [(None, 401), ("wrong", 401), ("", 401), (KEY, 200)],
        ids=["missing", "wrong", "empty", "right"],
    )
    async def test_api_key_is_required(self, fake, api, key, status):
        """A missing or wrong X-API-Key gets 401 problem+json; the right one passes."""
        user_id = fake.add_user()

        answer = await api.get_user(user_id, key=key)

        assert status == answer.status
        if status == 401:
            assert "https://httpstatuses.io/401" == answer.body["type"]

    async def test_header_name_is_case_insensitive(self, fake, api):
        """The key is accepted whatever the header name's case, e.g. X-API-KEY."""
        answer = await api.get_user(fake.add_user(), key_header="X-API-KEY")

        assert 200 == answer.status

    async def test_custom_key(self, session):
        """A fake built with another key accepts that key only."""
        async with FakeMonoCloud("other") as fake:
            api = Api(session, fake)
            user_id = fake.add_user()

            answers = [await api.get_user(user_id, key=key) for key in (KEY, "other")]

        assert [401, 200] == [answer.status for answer in answers]


@pytest.mark.asyncio
class TestOtherEndpoints:
    async def test_get_user(self, fake, api):
        """GET returns the stored user."""
        user_id = fake.add_user()

        answer = await api.get_user(user_id)

        assert (200, fake.users[user_id]) == (answer.status, answer.body)

    async def test_remove_primary_promotes_the_next(self, fake, api):
        """DELETE removes the phone; the next phone becomes primary."""
        first, second = phone_entry("+4411", primary=True), phone_entry("+4422")
        user_id = fake.add_user(phone_numbers=[first, second], last_updated=0)

        answer = await api.call("DELETE", f"/api/users/{user_id}/phones/{first['id']}")

        assert [("+4422", True)] == [
            (p["phone"], p["primary"]) for p in answer.body["phone_numbers"]
        ]
        assert 0 < answer.body["last_updated"]

    async def test_set_primary(self, fake, api):
        """POST .../primary makes that phone the only primary one."""
        first, second = phone_entry("+4411", primary=True), phone_entry("+4422")
        user_id = fake.add_user(phone_numbers=[first, second])

        answer = await api.call("POST", f"/api/users/{user_id}/phones/{second['id']}/primary")

        assert [False, True] == [p["primary"] for p in answer.body["phone_numbers"]]

    async def test_verify_and_unverify(self, fake, api):
        """POST .../verify and .../unverify set verified and verification_source."""
        entry = phone_entry("+4411")
        user_id = fake.add_user(phone_numbers=[entry])
        path = f"/api/users/{user_id}/phones/{entry['id']}"

        verified = await api.call("POST", f"{path}/verify")
        unverified = await api.call("POST", f"{path}/unverify")

        assert [(True, "monocloud"), (False, None)] == [
            (
                a.body["phone_numbers"][0]["verified"],
                a.body["phone_numbers"][0]["verification_source"],
            )
            for a in (verified, unverified)
        ]

    async def test_unknown_identifier_is_404(self, fake, api):
        """An unknown identifier id gets 404 problem+json."""
        user_id = fake.add_user()

        answer = await api.call("POST", f"/api/users/{user_id}/phones/{uuid.uuid4()}/verify")

        assert (404, "https://httpstatuses.io/404") == (answer.status, answer.body["type"])

    async def test_unknown_path_is_404_and_wrong_method_405(self, fake, api):
        """Unknown paths get 404 and known paths with another method 405, as problem+json."""
        user_id = fake.add_user()

        missing = await api.call("GET", "/api/nothing")
        wrong = await api.call("PUT", f"/api/users/{user_id}")

        assert (404, 405, "GET") == (missing.status, wrong.status, wrong.headers["Allow"])


@pytest.mark.asyncio
class TestRecording:
    async def test_records_each_request(self, fake, api):
        """Each request is recorded with method, raw path, headers, JSON body and time."""
        fake.add_user("a/b")
        before = time.monotonic()

        await api.add_phone("a/b", "+447700900123")
        await api.get_user("a/b", key_header="x-api-key")

        first, second = fake.requests
        assert isinstance(first, RecordedRequest)
        assert ("POST", "/api/users/a%2Fb/phones", {"phone_number": "+447700900123"}) == (
            first.method,
            first.path,
            first.json,
        )
        assert ("GET", None) == (second.method, second.json)
        assert before <= first.time <= second.time <= time.monotonic()

    async def test_headers_are_a_case_insensitive_dict(self, fake, api):
        """Recorded headers are a dict with lower-case names and lookups in any case."""
        await api.get_user(fake.add_user(), key_header="x-api-key")

        headers = fake.requests[0].headers

        assert isinstance(headers, dict)
        assert (KEY, KEY, True, None) == (
            headers["X-API-Key"],
            headers.get("X-API-KEY"),
            "X-Api-Key" in headers,
            headers.get("X-Missing"),
        )
        assert "x-api-key" in list(headers)

    async def test_non_json_body_is_recorded_as_none(self, fake, api):
        """A body that is not JSON is recorded as None."""
        await api.call("POST", f"/api/users/{fake.add_user()}/phones", data=b"{oops")

        assert fake.requests[0].json is None

    async def test_recording_can_be_turned_off(self, session):
        """With record_requests=False nothing is recorded but requests are counted."""
        async with FakeMonoCloud(record_requests=False) as fake:
            await Api(session, fake).get_user(fake.add_user())

        assert ([], 1) == (fake.requests, fake.stats.requests)

    async def test_request_ids_are_unique_on_every_response(self, fake, api):
        """Successes, errors, 429s and injected failures all carry distinct X-Request-Ids."""
        user_id = fake.add_user()
        answers = [
            await api.get_user(user_id),
            await api.get_user(user_id, key=None),
            await api.get_user("nobody"),
            await api.add_phone(user_id, "bad"),
        ]
        fake.fail_next(1)
        answers.append(await api.get_user(user_id))
        fake.rate_limit(1, burst=1)
        answers += [await api.get_user(user_id), await api.get_user(user_id)]

        ids = [answer.headers.get("X-Request-Id") for answer in answers]

        assert [200, 401, 404, 422, 503, 200, 429] == [answer.status for answer in answers]
        assert None not in ids
        assert len(ids) == len(set(ids))


@pytest.mark.asyncio
class TestFaults:
    async def test_fail_next(self, fake, api):
        """fail_next(n) fails the next n requests with problem+json and Retry-After."""
        user_id = fake.add_user()
        fake.fail_next(2, status=503, retry_after=7)

        answers = [await api.add_phone(user_id, f"+4477009001{i}") for i in range(3)]

        assert [503, 503, 200] == [answer.status for answer in answers]
        assert ["7", "7"] == [answer.headers["Retry-After"] for answer in answers[:2]]
        assert "https://httpstatuses.io/503" == answers[0].body["type"]
        assert ["+44770090012"] == [p["phone"] for p in fake.users[user_id]["phone_numbers"]]
        assert 2 == fake.stats.failures

    @pytest.mark.parametrize(
        ("retry_after", "expected"),
        [
            (None, None),
            (0.5, "0.5"),
            ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
        ids=["none", "fraction", "http-date"],
    )
    async def test_fail_next_retry_after_forms(self, fake, api, retry_after, expected):
        """Retry-After is absent by default and sent as given otherwise."""
        fake.fail_next(1, status=500, retry_after=retry_after)

        answer = await api.get_user(fake.add_user())

        assert (500, expected) == (answer.status, answer.headers.get("Retry-After"))

    async def test_disconnect_next_drops_without_storing(self, fake, api):
        """disconnect_next(n) closes the connection with no response and stores nothing."""
        user_id = fake.add_user()
        fake.disconnect_next(1)

        dropped = await api.add_phone(user_id, "+447700900123")
        after = await api.add_phone(user_id, "+447700900124")

        assert (None, 200) == (dropped.status, after.status)
        assert ["+447700900124"] == [p["phone"] for p in fake.users[user_id]["phone_numbers"]]
        assert (1, 2) == (fake.stats.disconnects, fake.stats.requests)

    async def test_disconnect_after_commit_stores_the_phone(self, fake, api):
        """With after_commit the phone is stored and only the response is lost."""
        user_id = fake.add_user()
        fake.disconnect_next(1, after_commit=True)

        dropped = await api.add_phone(user_id, "+447700900123")
        retry = await api.add_phone(user_id, "+447700900123")

        assert (None, 422) == (dropped.status, retry.status)
        assert ["+447700900123"] == [p["phone"] for p in fake.users[user_id]["phone_numbers"]]

    async def test_faults_apply_in_the_order_armed(self, fake, api):
        """Faults queue across kinds: armed fail then disconnect hit requests in that order."""
        user_id = fake.add_user()
        fake.fail_next(1, status=502)
        fake.disconnect_next(1)
        fake.fail_next(1, status=504)

        statuses = [(await api.add_phone(user_id, f"+4477009001{i}")).status for i in range(4)]

        assert [502, None, 504, 200] == statuses

    async def test_delay_adds_latency_until_cleared(self, fake, api):
        """delay(s) makes each request take at least s; delay(0) removes it."""
        user_id = fake.add_user()
        fake.delay(0.2)

        started = time.monotonic()
        await api.get_user(user_id)
        slow = time.monotonic() - started
        fake.delay(0)
        started = time.monotonic()
        await api.get_user(user_id)
        fast = time.monotonic() - started

        assert slow >= 0.2
        assert fast < 0.15

    async def outcomes(self, session, seed: int) -> list[int | None]:
        async with FakeMonoCloud(seed=seed) as fake:
            fake.set_fault_rates(fail_rate=0.3, disconnect_rate=0.3, status=500)
            api = Api(session, fake)
            user_id = fake.add_user()
            return [(await api.add_phone(user_id, f"+4477009{i:04}")).status for i in range(20)]

    async def test_random_faults_are_seeded(self, session):
        """Random fault rates replay identically for a seed and differ for another."""
        first = await self.outcomes(session, seed=1)
        again = await self.outcomes(session, seed=1)
        other = await self.outcomes(session, seed=2)

        assert first == again
        assert first != other
        assert {None, 200, 500} == set(first)

    async def test_random_faults_are_counted_and_cleared(self, fake, api):
        """A fail rate of 1 fails everything and counts it; rates of 0 clear it."""
        user_id = fake.add_user()
        fake.set_fault_rates(fail_rate=1.0, status=502)
        failed = await api.get_user(user_id)
        fake.set_fault_rates()
        passed = await api.get_user(user_id)

        assert (502, 200, 1) == (failed.status, passed.status, fake.stats.failures)

    async def test_random_disconnect_after_commit(self, fake, api):
        """Random disconnects honour after_commit."""
        user_id = fake.add_user()
        fake.set_fault_rates(disconnect_rate=1.0, after_commit=True)

        answer = await api.add_phone(user_id)

        assert (None, 1) == (answer.status, len(fake.users[user_id]["phone_numbers"]))

    @pytest.mark.parametrize(
        ("method", "args"),
        [
            ("fail_next", (-1,)),
            ("fail_next", (1, 200)),
            ("fail_next", (1, 600)),
            ("fail_next", (1, 503, -1)),
            ("fail_next", (1, 503, "1\r\nX: y")),
            ("disconnect_next", (-1,)),
            ("delay", (-0.1,)),
            ("delay", (float("inf"),)),
            ("set_fault_rates", (1.5,)),
            ("set_fault_rates", (0.6, 0.6)),
            ("set_fault_rates", (0.1, 0.1, 302)),
            ("rate_limit", (0,)),
            ("rate_limit", (float("nan"),)),
            ("rate_limit", (10, 0.5)),
        ],
    )
    async def test_bad_arguments_raise(self, method, args):
        """Out-of-range fault and limit settings raise ValueError."""
        with pytest.raises(ValueError):
            getattr(FakeMonoCloud(), method)(*args)


@pytest.mark.asyncio
class TestRateLimit:
    async def test_headers_under_and_over_the_limit(self, fake, api):
        """Responses carry the RateLimit headers; past the burst a 429 with Retry-After."""
        user_id = fake.add_user()
        fake.rate_limit(2, burst=2)

        answers = [await api.get_user(user_id) for _ in range(3)]

        assert [200, 200, 429] == [answer.status for answer in answers]
        assert [
            ("2", "1", "1", "2;w=1;burst=2", '"default";r=1;t=1'),
            ("2", "0", "1", "2;w=1;burst=2", '"default";r=0;t=1'),
            ("2", "0", "1", "2;w=1;burst=2", '"default";r=0;t=1'),
        ] == [tuple(answer.headers[name] for name in RATE_HEADERS) for answer in answers]
        assert [None, None, "1"] == [answer.headers.get("Retry-After") for answer in answers]
        assert ("https://httpstatuses.io/429", 1) == (
            answers[2].body["type"],
            fake.stats.rate_limited,
        )

    async def test_retry_after_is_whole_seconds_rounded_up(self, fake, api):
        """At 0.1 requests/s the 429 says Retry-After 10 and the limit reads 1."""
        user_id = fake.add_user()
        fake.rate_limit(0.1, burst=1)

        ok = await api.get_user(user_id)
        limited = await api.get_user(user_id)

        assert ("1", "0.1;w=1;burst=1", "10") == (
            ok.headers["RateLimit-Limit"],
            ok.headers["RateLimit-Policy"],
            ok.headers["RateLimit-Reset"],
        )
        assert (429, "10") == (limited.status, limited.headers["Retry-After"])

    @pytest.mark.parametrize(("rate", "policy"), [(50, "50;w=1;burst=5"), (5, "5;w=1;burst=1")])
    async def test_default_burst_is_a_tenth_of_the_rate(self, fake, api, rate, policy):
        """Without burst the bucket holds rate/10 tokens, at least 1."""
        fake.rate_limit(rate)

        answer = await api.get_user(fake.add_user())

        assert policy == answer.headers["RateLimit-Policy"]

    async def test_tokens_refill_over_time(self, fake, api):
        """After a 429, waiting for a token lets the next request through."""
        user_id = fake.add_user()
        fake.rate_limit(20, burst=1)

        statuses = [(await api.get_user(user_id)).status for _ in range(2)]
        await asyncio.sleep(0.1)
        statuses.append((await api.get_user(user_id)).status)

        assert [200, 429, 200] == statuses

    async def test_headers_false_sends_no_rate_headers(self, fake, api):
        """With headers=False neither the RateLimit headers nor Retry-After are sent."""
        user_id = fake.add_user()
        fake.rate_limit(1, burst=1, headers=False)

        answers = [await api.get_user(user_id) for _ in range(2)]
        names = {name.lower() for answer in answers for name in answer.headers}

        assert [200, 429] == [answer.status for answer in answers]
        assert set() == names & {name.lower() for name in (*RATE_HEADERS, "Retry-After")}

    async def test_none_removes_the_limit(self, fake, api):
        """rate_limit(None) lifts the limit and its headers."""
        user_id = fake.add_user()
        fake.rate_limit(1, burst=1)
        await api.get_user(user_id)
        fake.rate_limit(None)

        answers = [await api.get_user(user_id) for _ in range(3)]

        assert [200, 200, 200] == [answer.status for answer in answers]
        assert "RateLimit" not in answers[0].headers

    async def test_lowering_the_burst_clips_tokens(self, fake, api):
        """A smaller burst set while running caps the tokens left."""
        user_id = fake.add_user()
        fake.rate_limit(1, burst=5)
        fake.rate_limit(1, burst=2)

        statuses = [(await api.get_user(user_id)).status for _ in range(3)]

        assert [200, 200, 429] == statuses

    async def test_raising_the_burst_does_not_refill(self, fake, api):
        """A larger burst set while running keeps the tokens already spent."""
        user_id = fake.add_user()
        fake.rate_limit(1, burst=1)
        first = await api.get_user(user_id)
        fake.rate_limit(1, burst=10)
        second = await api.get_user(user_id)

        assert (200, 429, "1;w=1;burst=10") == (
            first.status,
            second.status,
            second.headers["RateLimit-Policy"],
        )

    async def test_limited_requests_use_up_no_fault(self, fake, api):
        """A request the limiter refuses does not consume an armed fault."""
        user_id = fake.add_user()
        fake.rate_limit(20, burst=1)
        await api.get_user(user_id)
        fake.fail_next(1)

        limited = await api.get_user(user_id)
        await asyncio.sleep(0.1)
        failed = await api.get_user(user_id)

        assert (429, 503) == (limited.status, failed.status)
        assert "RateLimit-Remaining" in failed.headers


@pytest.mark.asyncio
class TestStats:
    async def test_in_flight_counters_under_concurrency(self, fake, api):
        """in_flight counts requests inside the handler and max_in_flight its peak."""
        user_id = fake.add_user()
        fake.delay(0.2)

        calls = asyncio.gather(*(api.get_user(user_id) for _ in range(5)))
        reached = await wait_for(lambda: fake.stats.in_flight == 5)
        answers = await calls

        assert reached
        assert [200] * 5 == [answer.status for answer in answers]
        assert FakeStats(requests=5, in_flight=0, max_in_flight=5) == fake.stats

    async def test_reset(self, fake, api):
        """reset() zeroes the totals and restarts the peak from what is in flight."""
        fake.fail_next(1)
        await api.get_user("nobody")

        fake.stats.reset()

        assert FakeStats() == fake.stats


class TestPytestPlugin:
    @pytest.mark.asyncio
    async def test_fake_monocloud_fixture_is_running(self, fake_monocloud, session):
        """The fake_monocloud fixture is a running fake with the default key."""
        answer = await Api(session, fake_monocloud).get_user(fake_monocloud.add_user())

        assert (KEY, 200) == (fake_monocloud.api_key, answer.status)

    @pytest.mark.asyncio
    @pytest.mark.skipif(
        not hasattr(monocloud_async, "MonoCloudClient"), reason="MonoCloudClient not written yet"
    )
    async def test_monocloud_client_fixture_talks_to_the_fake(
        self, fake_monocloud, monocloud_client
    ):
        """The monocloud_client fixture reads users from fake_monocloud."""
        user_id = fake_monocloud.add_user()

        user = await monocloud_client.users.get_user(user_id)

        assert user_id == user.user_id

    def test_plugin_loads_without_pytest_asyncio(self, monkeypatch):
        """Without pytest-asyncio the plugin imports and defines no fixtures."""
        plugin = importlib.import_module("monocloud_async.testing._pytest_plugin")
        spec = importlib.util.spec_from_file_location("_plugin_copy", plugin.__file__)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "pytest_asyncio", None)

        spec.loader.exec_module(module)

        assert (False, False) == (
            hasattr(module, "_fake_monocloud"),
            hasattr(module, "_monocloud_client"),
        )
        assert hasattr(plugin, "_fake_monocloud")
