"""State in a relational database: SQLAlchemy 2 (async Core) with Alembic migrations.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is what production runs.
One module per aggregate holds its queries; `schema.py` holds the tables.
"""

from service.store.engine import Database

__all__ = ["Database"]
