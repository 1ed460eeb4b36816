"""Tortoise engines that track writes: name one as a connection's ``engine`` (or let
:func:`reality_tortoise.install` do it).

==================================  ====================================
Tortoise engine                     Reality engine
==================================  ====================================
``tortoise.backends.asyncpg``       ``reality_tortoise.backends.asyncpg``
``tortoise.backends.psycopg``       ``reality_tortoise.backends.psycopg``
``tortoise.backends.sqlite``        ``reality_tortoise.backends.sqlite``
==================================  ====================================

Each module follows Tortoise's engine contract (a ``client_class``, or
``get_client_class(db_info)``), so Tortoise loads it like its own.
"""
