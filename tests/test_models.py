"""Models and the package's own converter."""

from __future__ import annotations

import json

import cattrs
import pytest

from monocloud_async import errors
from monocloud_async._convert import converter, structure_user
from monocloud_async._sansio import read_user
from monocloud_async.models import (
    User,
    UserConnection,
    UserEmail,
    UserExternalProvider,
    UserPasskey,
    UserPhone,
    UserUsername,
)

EXPECTED = User(
    user_id="UOtBaOybB6dTpIJNrnkRw",
    disabled=True,
    connections=[UserConnection(idp="monocloud", connection_id="UOtBaOybB6dTpIJNrnkRw")],
    claims={"name": "John Doe", "given_name": "John", "family_name": "Doe"},
    public_data={
        "color_preference": {"dashboard": "monochrome"},
        "send_emails": True,
        "days_to_retain": 1,
    },
    private_data={
        "transaction_ids": ["5GRZ4X7XUItpRGOwkHhONqTtG", "9Fw7Jx9Zja5lWlmRkYJf1WMV9"],
        "subscription_plan": "premium",
        "last_renewed": 1672511400,
    },
    emails=[
        UserEmail(
            id="6cec8047-6149-4d9b-8d99-91c83c22a9dc",
            email="user@example.com",
            primary=False,
            verified=True,
            source="monocloud",
            verification_source="monocloud",
        )
    ],
    phone_numbers=[
        UserPhone(
            id="ab66b6a2-df6b-4f9d-9eb2-5a7142984e70",
            phone="+441514960453",
            primary=False,
            verified=True,
            source="monocloud",
            verification_source="monocloud",
        )
    ],
    passkeys=[
        UserPasskey(
            passkey_id="sM5X24vn_R3YqFvk8o5Hf7l3E1fMeyKnssiAgCYxouA",
            public_key=(
                "MIICYzCCAcygAwIBAgIBADAMQwwCgYDVQBgQD2bZEoZXIgZm9yIE9TLzM5MCAoUkFDRikwDgYDVR0P"
                "AQH/BAQDAgAGMA8GA1UdEwEB/wQFMAMB6Vf1nYi/rO+ryMO"
            ),
            aa_guid="204a871f-f7c4-465c-a81f-83d7ad4d04ee",
            backup_state=True,
            backup_eligibility=True,
            user_present=True,
            user_verified=True,
            user_agent=(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:127.0) Gecko/20100101 Firefox/127.0"
            ),
            name="IPhone 15 Pro Max",
        )
    ],
    force_password_reset=False,
    external_providers=[
        UserExternalProvider(
            authenticator="google",
            provider_user_id="79a500f9-aba6-4f03-baec-c18f4b7136ad",
            claims={"email": "user@example.com", "email_verified": "true", "name": "John Doe"},
        )
    ],
    creation_time=1640975400,
    last_updated=1640975400,
    username=UserUsername(
        id="9082b772-dbf6-4610-a71e-05fb93c0ab73", username="username", source="monocloud"
    ),
    has_password=True,
    failure_count=5,
    sign_in_attempts_count=20,
    sign_in_success_count=7,
    password_updated_at=1640975400,
    block_until=1640975400,
    last_sign_in_attempt=1640975400,
    last_sign_in_success=1640975400,
    last_activity=1640975400,
    last_sign_in_attempt_ip="1.1.1.1",
    last_sign_in_success_ip="1.1.1.1",
    last_known_city="New York",
    last_known_country="United States",
    last_known_region="US",
)


class TestUser:
    def test_example_decodes_field_by_field(self, user_json):
        """The documented example decodes into exactly the expected User."""
        assert EXPECTED == structure_user(user_json)

    def test_extra_fields_and_unknown_idp(self, user_json):
        """Unknown members and unknown idp/authenticator values never break decoding."""
        user_json["brand_new_field"] = {"x": 1}
        user_json["connections"].append({"idp": "okta-2031", "connection_id": "c2", "new": 1})
        user_json["external_providers"][0]["authenticator"] = "mastodon"
        user_json["phone_numbers"][0]["carrier"] = "acme"
        user = structure_user(user_json)
        assert "okta-2031" == user.connections[1].idp
        assert "mastodon" == user.external_providers[0].authenticator

    def test_nullable_fields(self, user_json):
        """Documented nullable fields accept null."""
        for key in ("password_updated_at", "last_known_city", "username", "block_until"):
            user_json[key] = None
        user_json["phone_numbers"][0]["source"] = None
        user = structure_user(user_json)
        assert (None, None, None) == (user.username, user.last_known_city, user.block_until)

    @pytest.mark.parametrize(
        ("key", "value"),
        [("disabled", "false"), ("creation_time", "1640975400"), ("user_id", 7), ("claims", [])],
    )
    def test_wrong_types_are_errors(self, user_json, key, value):
        """Types are not coerced: 'false' is not silently True."""
        user_json[key] = value
        with pytest.raises(errors.ResponseDecodeError) as info:
            read_user(200, {}, json.dumps(user_json).encode())
        assert isinstance(info.value.__cause__, cattrs.BaseValidationError | TypeError)
        assert key in str(info.value)

    def test_repr_masks_phone_numbers(self, user_json):
        """A User's repr never shows a full phone number."""
        text = repr(structure_user(user_json))
        assert "+441514960453" not in text
        assert "0453" in text

    def test_has_phone(self):
        """has_phone compares the E.164 string."""
        assert EXPECTED.has_phone("+441514960453")
        assert not EXPECTED.has_phone("+441514960454")

    def test_own_converter(self):
        """Our hooks live on our converter, not cattrs' global one."""
        assert converter is not cattrs.global_converter
        assert "1" == cattrs.structure(1, str)
