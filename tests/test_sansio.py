"""The protocol without I/O: configuration, request building, response reading, headers."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from monocloud_async import errors
from monocloud_async._sansio import (
    RateLimitInfo,
    add_phone_request,
    api_base,
    api_error,
    check_api_key,
    check_phone_number,
    encode_user_id,
    get_user_request,
    parse_rate_limit,
    parse_retry_after,
    read_user,
)

PROBLEM = {"Content-Type": "application/problem+json"}


def problem_body(status: int, **extra: object) -> bytes:
    doc = {"type": f"https://httpstatuses.io/{status}", "title": "Oops", "status": status}
    doc.update(extra)
    return json.dumps(doc).encode()


class TestApiBase:
    @pytest.mark.parametrize(
        ("domain", "expected"),
        [
            ("acme.us.monocloud.com", "https://acme.us.monocloud.com/api/"),
            ("acme.us.monocloud.com/", "https://acme.us.monocloud.com/api/"),
            ("https://acme.us.monocloud.com//", "https://acme.us.monocloud.com/api/"),
            ("HTTPS://Acme.com:8443", "https://acme.com:8443/api/"),
            ("https://acme.com/api/", "https://acme.com/api/"),
            ("http://localhost:8080", "http://localhost:8080/api/"),
            ("http://127.0.0.5", "http://127.0.0.5/api/"),
            ("http://[::1]:9000/", "http://[::1]:9000/api/"),
            ("  acme.com  ", "https://acme.com/api/"),
        ],
    )
    def test_normalises(self, domain, expected):
        """Bare hosts get https://, trailing slashes go, loopback may use http://."""
        assert expected == api_base(domain)

    @pytest.mark.parametrize(
        "domain",
        [
            "",
            "   ",
            "http://acme.com",
            "http://10.0.0.1",
            "ftp://acme.com",
            "https://user:pw@acme.com",
            "https://acme.com/tenant",
            "https://acme.com?x=1",
            "acme .com",
            "acme.com\r\nX: y",
            "https://",
            "https://acme.com:99999",
        ],
    )
    def test_rejects(self, domain):
        """Non-loopback http, other schemes, credentials, paths and junk are config errors."""
        with pytest.raises(errors.ConfigurationError):
            api_base(domain)


class TestApiKey:
    @pytest.mark.parametrize("key", ["", "   ", "abc\r\nX-Evil: 1", "abc\x00", "ключ", 12])
    def test_rejects(self, key):
        """Empty keys, control characters (header injection) and non-strings are rejected."""
        with pytest.raises(errors.ConfigurationError) as info:
            check_api_key(key)
        assert "abc" not in str(info.value)

    def test_accepts_a_plain_key(self):
        """A printable ASCII key passes unchanged."""
        assert "mc_live_0123" == check_api_key("mc_live_0123")


class TestUserId:
    @pytest.mark.parametrize(
        ("user_id", "segment"),
        [
            ("UOtBaOybB6dTpIJNrnkRw", "UOtBaOybB6dTpIJNrnkRw"),
            ("a/b", "a%2Fb"),
            ("a b", "a%20b"),
            ("a?b#c", "a%3Fb%23c"),
            ("../x", "..%2Fx"),
            ("...", "..."),
            ("%2F", "%252F"),
            ("üser", "%C3%BCser"),
            ("a;b=c", "a%3Bb%3Dc"),
        ],
    )
    def test_encodes_one_segment(self, user_id, segment):
        """Every character that could change the path is percent-encoded."""
        assert segment == encode_user_id(user_id)

    @pytest.mark.parametrize("user_id", ["", ".", "..", None, 5])
    def test_rejects(self, user_id):
        """Empty, '.', '..' and non-strings are rejected before any I/O."""
        with pytest.raises(errors.InvalidRequestError):
            encode_user_id(user_id)


class TestPhoneNumber:
    @pytest.mark.parametrize("phone", ["+12", "+919988776655", "+123456789012345"])
    def test_accepts_e164(self, phone):
        """'+' then 2 to 15 digits, the first not 0."""
        assert phone == check_phone_number(phone)

    @pytest.mark.parametrize(
        "phone",
        ["", "+", "+1", "919988776655", "+0123", "+1234567890123456", "+91 99887", "+91-998", None],
    )
    def test_rejects(self, phone):
        """Anything else is an InvalidRequestError."""
        with pytest.raises(errors.InvalidRequestError):
            check_phone_number(phone)

    def test_error_masks_the_number(self):
        """The error message shows at most the last four digits."""
        with pytest.raises(errors.InvalidRequestError) as info:
            check_phone_number("+0919988776655")
        assert "0919988776655" not in str(info.value)
        assert "6655" in str(info.value)


class TestRequests:
    def test_add_phone(self):
        """POST users/{id}/phones with the exact JSON body."""
        req = add_phone_request("a/b", "+919988776655", is_verified=True)
        assert ("POST", "users/a%2Fb/phones") == (req.method, req.path)
        assert {
            "phone_number": "+919988776655",
            "is_verified": True,
            "skip_restriction_checks": False,
        } == json.loads(req.body or b"")
        assert "9988776655" not in repr(req)

    @pytest.mark.parametrize("verified", [True, False])
    @pytest.mark.parametrize("skip", [True, False])
    def test_add_phone_body_is_compact_json(self, verified, skip):
        """The body is byte for byte what json.dumps would send."""
        req = add_phone_request(
            "u", "+14155550100", is_verified=verified, skip_restriction_checks=skip
        )
        expected = {
            "phone_number": "+14155550100",
            "is_verified": verified,
            "skip_restriction_checks": skip,
        }
        assert json.dumps(expected, separators=(",", ":")).encode() == req.body

    def test_add_phone_rejects_non_bool_flags(self):
        """A truthy string is not a bool: rejected rather than guessed."""
        with pytest.raises(errors.InvalidRequestError):
            add_phone_request("u", "+14155550100", is_verified="false")

    def test_get_user(self):
        """GET users/{id} without a body."""
        req = get_user_request("u 1")
        assert ("GET", "users/u%201", None) == (req.method, req.path, req.body)


class TestReadUser:
    def test_decodes_the_example(self, user_bytes):
        """A 200 with the documented body decodes into a User."""
        user = read_user(200, CIMultiDict(), user_bytes)
        assert "UOtBaOybB6dTpIJNrnkRw" == user.user_id

    @pytest.mark.parametrize(
        "body", [b"", b"not json", b"[]", b'{"user_id": 5}', b'{"phone_numbers": []}']
    )
    def test_invalid_body_is_a_decode_error(self, body):
        """A 2xx whose body is not a User raises ResponseDecodeError, chained."""
        with pytest.raises(errors.ResponseDecodeError) as info:
            read_user(200, CIMultiDict({"X-Request-Id": "r1"}), body)
        assert info.value.__cause__ is not None
        assert "r1" == info.value.request_id


CASES = [
    (400, errors.BadRequestError),
    (401, errors.UnauthorizedError),
    (402, errors.PaymentRequiredError),
    (403, errors.ForbiddenError),
    (404, errors.NotFoundError),
    (409, errors.ConflictError),
    (422, errors.UnprocessableEntityError),
    (429, errors.RateLimitError),
    (500, errors.ServerError),
    (502, errors.ServerError),
    (503, errors.ServerError),
    (504, errors.ServerError),
    (418, errors.APIError),
    (307, errors.APIError),
]


class TestApiError:
    @pytest.mark.parametrize(("status", "cls"), CASES)
    def test_class_by_status_from_problem(self, status, cls):
        """The class is chosen by status; problem+json fills ProblemDetails and the message."""
        body = problem_body(status, detail="The thing failed", traceId="00-abc-01", extra=1)
        err = api_error(status, CIMultiDict(PROBLEM), body)
        assert cls is type(err)
        assert status == err.status
        assert err.problem is not None
        assert "The thing failed" == err.problem.detail
        assert {"traceId": "00-abc-01", "extra": 1} == err.problem.extensions
        assert "00-abc-01" == err.request_id
        assert str(status) in str(err)
        assert "The thing failed" in str(err)

    @pytest.mark.parametrize(("status", "cls"), CASES)
    @pytest.mark.parametrize(
        ("ctype", "body", "needle"),
        [
            ("text/plain", b"upstream connect error", "upstream connect error"),
            (
                "text/html",
                b"<html><body><h1>Bad Gateway</h1><p>nginx</p></body></html>",
                "Bad Gateway nginx",
            ),
            ("application/json", b"", "(empty body)"),
            ("application/problem+json", b"{broken", "{broken"),
        ],
        ids=["plain", "html", "empty", "broken-json"],
    )
    def test_non_problem_bodies(self, status, cls, ctype, body, needle):
        """Plain, HTML, empty and broken bodies still give status and a useful message."""
        err = api_error(status, CIMultiDict({"Content-Type": ctype}), body)
        assert cls is type(err)
        assert err.problem is None
        assert str(err).startswith(str(status))
        assert needle in str(err)

    def test_long_body_is_truncated(self):
        """An excerpt of a huge error page is short."""
        err = api_error(502, CIMultiDict({"Content-Type": "text/html"}), b"x" * 100_000)
        assert len(str(err)) < 300

    def test_validation_error_map(self):
        """422 validation-error: errors is field -> messages."""
        body = problem_body(
            422,
            type="https://httpstatuses.io/422#validation-error",
            errors={"phone_number": ["Invalid phone number"]},
        )
        err = api_error(422, CIMultiDict(PROBLEM), body)
        assert isinstance(err, errors.UnprocessableEntityError)
        assert {"phone_number": ["Invalid phone number"]} == err.errors
        assert "phone_number: Invalid phone number" in str(err)

    def test_identity_error_list(self):
        """422 identity-validation-error: errors is a list of IdentityError."""
        body = problem_body(
            422,
            type="https://httpstatuses.io/422#identity-validation-error",
            errors=[{"code": "DuplicatePhoneNumber", "description": "Phone +919988776655 taken"}],
        )
        err = api_error(422, CIMultiDict(PROBLEM), body)
        assert isinstance(err, errors.UnprocessableEntityError)
        assert isinstance(err.errors, list)
        assert ["DuplicatePhoneNumber"] == [e.code for e in err.errors]
        assert "DuplicatePhoneNumber" in str(err)
        assert "9988776655" not in repr(err.errors)

    def test_phone_numbers_in_server_text_are_masked(self):
        """A server detail echoing the number does not put it in the message."""
        body = problem_body(400, detail="Phone +919988776655 is blocked")
        err = api_error(400, CIMultiDict(PROBLEM), body)
        assert "9988776655" not in str(err)
        assert "9988776655" not in repr(err.problem)

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"X-Request-Id": "req-1", "traceparent": "00-t-01"}, "req-1"),
            ({"traceparent": "00-t-01"}, "00-t-01"),
            ({}, "trace-from-body"),
        ],
    )
    def test_request_id_precedence(self, headers, expected):
        """X-Request-Id, then traceparent, then the problem's traceId."""
        err = api_error(
            404, CIMultiDict({**PROBLEM, **headers}), problem_body(404, traceId="trace-from-body")
        )
        assert expected == err.request_id
        assert expected in str(err)

    def test_rate_limit_error_reads_retry_after(self):
        """A 429 carries retry_after from Retry-After."""
        err = api_error(429, CIMultiDict({"Retry-After": "7"}), b"")
        assert isinstance(err, errors.RateLimitError)
        assert 7.0 == err.retry_after

    def test_errors_pickle(self):
        """Errors survive pickling with their details."""
        body = problem_body(422, errors=[{"code": "DuplicatePhoneNumber", "description": "d"}])
        err = api_error(422, CIMultiDict({**PROBLEM, "X-Request-Id": "r"}), body, attempts=3)
        copy = pickle.loads(pickle.dumps(err))
        assert (type(err), str(err), err.status, err.request_id, err.attempts, err.errors) == (
            type(copy),
            str(copy),
            copy.status,
            copy.request_id,
            copy.attempts,
            copy.errors,
        )
        assert "r" == copy.headers["X-Request-Id"]


NOW = 1_700_000_000.0


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0.0),
            ("5", 5.0),
            (" 2.5 ", 2.5),
            ("60", 60.0),
            ("61", 61.0),
            (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
            (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
            ("-3", None),
            ("soon", None),
            ("", None),
            ("nan", None),
            (None, None),
        ],
    )
    def test_values(self, value, expected):
        """Delta-seconds, HTTP-dates (past ones are 0), and garbage (None)."""
        assert expected == parse_retry_after(value, NOW)


class TestRateLimitHeaders:
    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({}, RateLimitInfo()),
            (
                {"RateLimit-Limit": "300", "RateLimit-Remaining": "12", "RateLimit-Reset": "1"},
                RateLimitInfo(limit=300, remaining=12, reset=1),
            ),
            (
                {
                    "X-RateLimit-Limit": "5000",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(NOW) + 90),
                },
                RateLimitInfo(limit=5000, remaining=0, reset=90),
            ),
            (
                {"RateLimit": '"default";r=0;t=3'},
                RateLimitInfo(remaining=0, reset=3),
            ),
            (
                {"RateLimit-Limit": "300", "RateLimit-Policy": "300;w=1;burst=30"},
                RateLimitInfo(limit=300, window=1, burst=30),
            ),
            (
                {"RateLimit-Policy": '"default";q=600;w=60'},
                RateLimitInfo(limit=600, window=60),
            ),
            (
                {"RateLimit-Limit": "100, 100;w=60", "RateLimit-Reset": "junk"},
                RateLimitInfo(limit=100),
            ),
        ],
        ids=["none", "ietf", "x-epoch", "combined", "policy", "policy-q", "old-draft"],
    )
    def test_styles(self, headers, expected):
        """Each header style is read; resets above a day are epoch timestamps."""
        assert expected == parse_rate_limit(CIMultiDict(headers), NOW)

    def test_rate(self):
        """A limit with a window gives a rate in requests per second."""
        assert 10.0 == RateLimitInfo(limit=600, window=60).rate
        assert RateLimitInfo(limit=600).rate is None
