"""Past ``max_keys`` keys of one kind in one transaction, the kind escalates (issue 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tortoise import Tortoise, fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

import reality_tortoise
from reality_core.errors import ConfigurationError
from reality_core.keys import row_key


class Bulky(Model):
    id = fields.IntField(primary_key=True)
    room_id = fields.IntField()

    class Meta:
        app = "maxkeys"
        table = "bulky"
        reality = reality_tortoise.Track(keys=["bulkroom:{room_id}"])


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[str]:
    url = f"sqlite:///{tmp_path}/bulk.db"
    config = {
        "connections": {"default": reality_tortoise.connection_config(url, max_keys=50)},
        "apps": {"maxkeys": {"models": [__name__], "default_connection": "default"}},
    }
    await Tortoise.init(config=config)
    await Tortoise.generate_schemas()
    try:
        yield url
    finally:
        await Tortoise.close_connections()


async def test_a_large_transaction_escalates_row_keys_past_max_keys(db: str) -> None:
    async with in_transaction():
        for i in range(1, 201):
            await Bulky.create(id=i, room_id=i % 10)
    reader = reality_tortoise.version_reader()
    try:
        keys = [row_key("bulky", [1]), row_key("bulky", [9999]), "bulkroom:3", "bulkroom:11"]
        snap = reader.read(keys)
        # 200 row keys > 50: one marker, so even row 9999 reads as changed; ten rooms: exact.
        assert [snap.version(k) for k in keys] == [1, 1, 1, 0]
    finally:
        reader.close()


def test_max_keys_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="max_keys"):
        reality_tortoise.Settings(max_keys=0)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("{id}", "literal"), ("$x:{id}", "reserved"), ("room:{id!r}", "format spec"),
     ("room:{", "malformed")],
)
def test_malformed_templates_fail_at_declaration(pattern: str, message: str) -> None:
    from reality_core.errors import DeclarationError

    with pytest.raises(DeclarationError, match=message):
        reality_tortoise.Track(keys=[pattern])
