"""Models of the peewee plugin's own tests (the contract suite has orders/posts/tags)."""

from __future__ import annotations

import peewee

import reality_peewee


class Room(peewee.Model):
    name = peewee.CharField(max_length=50, default="")


class Message(peewee.Model):
    room = peewee.ForeignKeyField(Room, null=True, on_delete="CASCADE")  # column room_id
    body = peewee.TextField(default="")
    score = peewee.IntegerField(default=0)


class Tag(peewee.Model):
    name = peewee.CharField(max_length=50, unique=True)


class Post(peewee.Model):
    title = peewee.CharField(max_length=50, default="")
    tags = peewee.ManyToManyField(Tag, backref="posts")  # automatic model post_tag_through


class Comment(peewee.Model):
    """A child peewee deletes itself (``delete_instance(recursive=True)``): no cascade."""

    post = peewee.ForeignKeyField(Post, backref="comments")
    body = peewee.TextField(default="")


class Seat(peewee.Model):
    """A composite primary key."""

    hall = peewee.CharField(max_length=10)
    number = peewee.IntegerField()
    room_id = peewee.IntegerField(null=True)

    class Meta:
        primary_key = peewee.CompositeKey("hall", "number")


class Plain(peewee.Model):
    """Not tracked."""

    name = peewee.CharField(max_length=50, default="")


PostTag = Post.tags.get_through_model()
MODELS = [Room, Message, Tag, Post, PostTag, Comment, Seat, Plain]


def declare() -> None:
    reality_peewee.registry.clear()
    reality_peewee.track(Room)
    reality_peewee.track(Message, keys=["room:{room_id}"])
    reality_peewee.track(Tag)
    reality_peewee.track(Post)  # and post_tag_through, the link table of Post.tags
    reality_peewee.track(Comment, keys=["post:{post}:comments"])
    reality_peewee.track(Seat, keys=["seats:{room_id}"])
