"""The README's testing example runs as written."""

from __future__ import annotations

import pytest


@pytest.mark.asyncio
async def test_adds_a_phone(fake_monocloud, monocloud_client):
    """The fixtures from the README work together."""
    user_id = fake_monocloud.add_user()
    user = await monocloud_client.users.add_phone(user_id, "+14155550100")
    assert user.has_phone("+14155550100")
    assert "+14155550100" == fake_monocloud.requests[-1].json["phone_number"]


@pytest.mark.asyncio
async def test_survives_a_lost_response(fake_monocloud, monocloud_client):
    """A lost response is reconciled: one phone stored, the user returned."""
    user_id = fake_monocloud.add_user()
    fake_monocloud.disconnect_next(1, after_commit=True)
    user = await monocloud_client.users.add_phone(user_id, "+14155550100")
    assert user.has_phone("+14155550100")
    assert 1 == len(fake_monocloud.users[user_id]["phone_numbers"])
