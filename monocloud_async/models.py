"""The MonoCloud Management API's resources as frozen attrs classes.

Field names and nullability follow the wire (snake_case). Timestamps stay epoch-second ints.
Enum-like values (``idp``, ``authenticator``) are plain strings, so a provider added by the
service tomorrow decodes today. Phone numbers are masked in every ``repr``.
"""

from __future__ import annotations

from typing import Any

import attrs

from monocloud_async._redact import mask_phone, redact_text

__all__ = [
    "IdentityError",
    "ProblemDetails",
    "User",
    "UserConnection",
    "UserEmail",
    "UserExternalProvider",
    "UserPasskey",
    "UserPhone",
    "UserUsername",
]


@attrs.frozen
class UserPhone:
    """A phone number on a user's profile.

    Attributes:
        id: The identifier id (a UUID) used by the other phone endpoints.
        phone: The number in E.164 form (masked in ``repr``).
        primary: Whether it is the user's primary number.
        verified: Whether the number is verified.
        source: Where the number came from, if known.
        verification_source: Who verified it, if anyone.
    """

    id: str
    phone: str = attrs.field(repr=mask_phone)
    primary: bool = False
    verified: bool = False
    source: str | None = None
    verification_source: str | None = None


@attrs.frozen
class UserEmail:
    """An email address on a user's profile."""

    id: str
    email: str
    primary: bool = False
    verified: bool = False
    source: str | None = None
    verification_source: str | None = None


@attrs.frozen
class UserPasskey:
    """A registered passkey (WebAuthn credential)."""

    passkey_id: str
    public_key: str
    aa_guid: str
    backup_state: bool = False
    backup_eligibility: bool = False
    user_present: bool = False
    user_verified: bool = False
    user_agent: str | None = None
    name: str | None = None


@attrs.frozen
class UserConnection:
    """A connection (identity provider) the user signs in through.

    ``idp`` is a plain string (``"monocloud"``, ``"google"``, ...) so new providers decode.
    """

    idp: str
    connection_id: str


@attrs.frozen
class UserExternalProvider:
    """An external identity linked to the user, with the claims it supplied."""

    authenticator: str
    provider_user_id: str
    claims: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class UserUsername:
    """The user's username identifier."""

    id: str
    username: str
    source: str | None = None


@attrs.frozen
class User:
    """A MonoCloud user, as returned by every user endpoint."""

    user_id: str
    disabled: bool = False
    connections: list[UserConnection] = attrs.Factory(list)
    claims: dict[str, Any] = attrs.Factory(dict)
    public_data: dict[str, Any] = attrs.Factory(dict)
    private_data: dict[str, Any] = attrs.Factory(dict)
    emails: list[UserEmail] = attrs.Factory(list)
    phone_numbers: list[UserPhone] = attrs.Factory(list)
    passkeys: list[UserPasskey] = attrs.Factory(list)
    force_password_reset: bool = False
    external_providers: list[UserExternalProvider] = attrs.Factory(list)
    creation_time: int = 0
    last_updated: int = 0
    username: UserUsername | None = None
    has_password: bool = False
    failure_count: int = 0
    sign_in_attempts_count: int = 0
    sign_in_success_count: int = 0
    password_updated_at: int | None = None
    block_until: int | None = None
    last_sign_in_attempt: int | None = None
    last_sign_in_success: int | None = None
    last_activity: int | None = None
    last_sign_in_attempt_ip: str | None = None
    last_sign_in_success_ip: str | None = None
    last_known_city: str | None = None
    last_known_country: str | None = None
    last_known_region: str | None = None

    def has_phone(self, phone_number: str) -> bool:
        """Whether ``phone_number`` (E.164) is one of the user's phone numbers."""
        return any(p.phone == phone_number for p in self.phone_numbers)


@attrs.frozen
class IdentityError:
    """One entry of a 422 ``identity-validation-error`` problem (e.g. ``DuplicatePhoneNumber``)."""

    code: str
    description: str = attrs.field(default="", repr=redact_text)


@attrs.frozen
class ProblemDetails:
    """An RFC 9457 problem document.

    Attributes:
        type: A URI naming the problem type.
        title: A short summary of the problem type.
        status: The HTTP status the server put in the body.
        detail: An explanation of this occurrence.
        instance: A URI naming this occurrence.
        extensions: Every other member of the document (``errors``, ``traceId``, ...).
    """

    type: str | None = None
    title: str | None = None
    status: int | None = None
    detail: str | None = attrs.field(default=None, repr=redact_text)
    instance: str | None = None
    extensions: dict[str, Any] = attrs.field(factory=dict, repr=redact_text)
