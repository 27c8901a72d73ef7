"""Alembic's environment for the controller's store, run by controller.store.migrate.

There is no alembic.ini: controller.store.migrate builds Alembic's configuration in code
and hands over the connection to migrate (config.attributes["connection"]), inside the
transaction it opened. Offline (SQL script) mode is not used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from controller.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the store's migrations run through controller.store.migrate "
        "(loa-controller db upgrade), which hands them a connection"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters a table by copying it; later revisions use op.batch_alter_table.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
