"""install()/uninstall() on Tortoise configs, connection_config(), and declarations."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tortoise import fields
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.config import TortoiseConfig
from tortoise.context import TortoiseContext
from tortoise.models import Model
from tortoise.transactions import in_transaction

import reality_tortoise
from reality_core.errors import ConfigurationError, DeclarationError
from reality_core.keys import table_key
from reality_tortoise.backends.asyncpg import RealityAsyncpgClient
from reality_tortoise.backends.sqlite import RealitySqliteClient, split_script
from tests.contract.tortoise_harness import TortoiseHarness
from tests.tortoise.conftest import watch
from tests.tortoise.models import Plain

CONFIG: dict[str, Any] = {
    "connections": {
        "default": "postgres://app:secret@db.example:5433/app",
        "files": {"engine": "tortoise.backends.sqlite", "credentials": {"file_path": "x.db"}},
    },
    "apps": {"models": {"models": ["app.models"], "default_connection": "default"}},
}


def test_install_swaps_engines_and_leaves_its_input_alone() -> None:
    original = copy.deepcopy(CONFIG)
    installed = reality_tortoise.install(CONFIG, raw_sql="strict")
    assert original == CONFIG
    default = installed["connections"]["default"]
    assert default["engine"] == "reality_tortoise.backends.asyncpg"
    expected = expand_db_url(CONFIG["connections"]["default"])["credentials"]
    settings = {"raw_sql": "strict", "max_keys": 1000}
    assert default["credentials"] == {**expected, "reality": settings}
    assert installed["connections"]["files"]["engine"] == "reality_tortoise.backends.sqlite"
    assert installed["apps"] == CONFIG["apps"]


def test_install_is_idempotent_and_uninstall_gives_tortoise_back() -> None:
    once = reality_tortoise.install(CONFIG)
    assert reality_tortoise.install(once) == once
    back = reality_tortoise.uninstall(once)
    assert back["connections"]["default"] == expand_db_url(CONFIG["connections"]["default"])
    assert back["connections"]["files"] == CONFIG["connections"]["files"]
    assert reality_tortoise.uninstall(back) == back


def test_install_some_connections_and_a_tortoise_config_object() -> None:
    config = TortoiseConfig.from_dict(CONFIG)
    installed = reality_tortoise.install(config, connections=["files"])
    assert installed["connections"]["default"] == CONFIG["connections"]["default"]
    assert installed["connections"]["files"]["engine"] == "reality_tortoise.backends.sqlite"
    with pytest.raises(ConfigurationError, match="lacks"):
        reality_tortoise.install(CONFIG, connections=["nope"])


@pytest.mark.parametrize(("config", "message"), [
    ({"connections": {"default": "mysql://root@localhost/app"}, "apps": {}}, "supports"),
    ({"connections": {"default": 42}, "apps": {}}, "expected a database URL"),
    ({"apps": {}}, "connections"),
])
def test_install_refuses_what_it_cannot_track(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        reality_tortoise.install(config)


def test_install_refuses_an_unknown_raw_sql_policy() -> None:
    with pytest.raises(ConfigurationError, match="raw_sql"):
        reality_tortoise.install(CONFIG, raw_sql="lenient")  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "engine", "credentials"), [
    ("postgresql://u:p%40ss@h:6000/d", "asyncpg",
     {"host": "h", "port": 6000, "user": "u", "password": "p@ss", "database": "d"}),
    ("postgresql+psycopg://u@h/d", "psycopg",
     {"host": "h", "port": 5432, "user": "u", "password": None, "database": "d"}),
    ("postgresql+asyncpg://u@h/d", "asyncpg",
     {"host": "h", "port": 5432, "user": "u", "password": None, "database": "d"}),
    ("sqlite:////tmp/app.db", "sqlite", {"file_path": "/tmp/app.db"}),
    ("sqlite://", "sqlite", {"file_path": ":memory:"}),
])
def test_connection_config(url: str, engine: str, credentials: dict[str, Any]) -> None:
    got = reality_tortoise.connection_config(url)
    assert got == {"engine": f"reality_tortoise.backends.{engine}",
                   "credentials": {**credentials,
                                   "reality": {"raw_sql": "conservative", "max_keys": 1000}}}


@pytest.mark.parametrize("url", ["postgresql+pg8000://u@h/d", "mysql://root@h/d"])
def test_connection_config_refuses_drivers_tortoise_lacks(url: str) -> None:
    with pytest.raises(ConfigurationError):
        reality_tortoise.connection_config(url)


async def test_the_installed_config_builds_reality_clients_and_uninstalled_tortoise_ones(
        tmp_path: Any) -> None:
    config = {"connections": {"pg": "postgres://u@localhost/x",
                              "lite": f"sqlite://{tmp_path}/a.db"},
              "apps": {"models": {"models": ["tests.tortoise.models"],
                                  "default_connection": "lite"}}}
    async with TortoiseContext() as ctx:
        await ctx.init(config=reality_tortoise.install(config))
        assert type(ctx.connections.get("pg")) is RealityAsyncpgClient
        assert type(ctx.connections.get("lite")) is RealitySqliteClient
        assert sorted(reality_tortoise.installed()) == ["lite", "pg"]
    async with TortoiseContext() as ctx:
        await ctx.init(config=reality_tortoise.uninstall(reality_tortoise.install(config)))
        assert type(ctx.connections.get("pg")) is AsyncpgDBClient
        assert reality_tortoise.installed() == []


async def test_track_a_model_without_meta_and_untrack_it(h: TortoiseHarness) -> None:
    plain = table_key("t_plain")
    reality_tortoise.track(Plain)
    try:
        v = await watch(h, plain)
        await Plain.create(value=1)
        assert await v.moved() == {plain}
    finally:
        reality_tortoise.untrack(Plain)
    v = await watch(h, plain)
    async with in_transaction():
        await Plain.create(value=2)
    assert await v.moved() == set()


class Abstract(Model):
    id = fields.IntField(primary_key=True)

    class Meta:
        abstract = True


class Owned(Model):
    id = fields.IntField(primary_key=True)
    room: fields.ForeignKeyNullableRelation[Owned] = fields.ForeignKeyField(
        "models.Owned", null=True)

    class Meta:
        table = "t_owned"


def test_track_refuses_bad_declarations_at_once() -> None:
    with pytest.raises(DeclarationError, match="does not have"):
        reality_tortoise.track(Owned, keys=["room:{roomid}"])
    with pytest.raises(DeclarationError, match="single string"):
        reality_tortoise.track(Owned, keys="room:{room_id}")
    with pytest.raises(DeclarationError, match="abstract"):
        reality_tortoise.track(Abstract)
    with pytest.raises(DeclarationError, match="Tortoise model"):
        reality_tortoise.track(int)  # type: ignore[type-var]
    with pytest.raises(DeclarationError, match=r"reserved|literal"):
        reality_tortoise.track(Owned, keys=["{room_id}"])
    # a foreign key's <name>_id is known before Tortoise.init
    assert reality_tortoise.track(Owned, keys=["room:{room_id}"]) is Owned
    reality_tortoise.untrack(Owned)


def test_a_meta_declaration_that_is_no_track_is_refused() -> None:
    from reality_tortoise._declarations import spec_for

    class Wrong(Model):
        id = fields.IntField(primary_key=True)

        class Meta:
            table = "t_wrong"
            reality = ["room:{id}"]

    with pytest.raises(DeclarationError, match="Track"):
        spec_for(Wrong)


def test_split_script_respects_strings_comments_and_triggers() -> None:
    script = ("CREATE TABLE a (x TEXT DEFAULT ';');\n-- a comment; still a comment\n"
              "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = ';'; END;\n"
              "INSERT INTO a VALUES ('1;2')")
    assert [s.strip() for s in split_script(script)] == [
        "CREATE TABLE a (x TEXT DEFAULT ';');",
        "-- a comment; still a comment\nCREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a "
        "SET x = ';'; END;",
        "INSERT INTO a VALUES ('1;2');",
    ]


def test_public_names_are_sorted_and_complete() -> None:
    names = reality_tortoise.__all__
    assert names == sorted(names)
    public = {n for n in vars(reality_tortoise) if not n.startswith("_")} - {
        "annotations", "backends"}
    assert public == set(names)
