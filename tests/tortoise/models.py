"""Models of the plugin's own tests, beside the contract harness's orders/posts/tags."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from reality_tortoise import Track


class Room(Model):
    """Generated primary keys; a tracked parent whose deletes cascade into messages."""

    id = fields.IntField(primary_key=True)
    title = fields.CharField(max_length=50, default="")

    class Meta:
        table = "t_rooms"
        reality = Track()


class Message(Model):
    id = fields.IntField(primary_key=True)
    room: fields.ForeignKeyRelation[Room] = fields.ForeignKeyField(
        "models.Room", related_name="messages", on_delete=fields.CASCADE)
    text = fields.CharField(max_length=200, default="", source_field="body")

    class Meta:
        table = "t_messages"
        reality = Track(keys=["chat:{room_id}"])


class Plain(Model):
    """Not tracked: its writes bump nothing."""

    id = fields.IntField(primary_key=True)
    value = fields.IntField(default=0)

    class Meta:
        table = "t_plain"


class Shelf(Model):
    """Not tracked, but deleting one cascades into tracked books."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=20, default="")

    class Meta:
        table = "t_shelves"


class Book(Model):
    id = fields.IntField(primary_key=True)
    shelf: fields.ForeignKeyRelation[Shelf] = fields.ForeignKeyField(
        "models.Shelf", related_name="books", on_delete=fields.CASCADE)

    class Meta:
        table = "t_books"
        reality = Track(keys=["shelf:{shelf_id}"])
