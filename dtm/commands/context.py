"""What a data command's handler may use of whoever runs it: the selected database, the
keyspace (for commands that name another database: COPY … DB, MOVE, SWAPDB, FLUSHALL)
and the configuration (limits such as proto-max-bulk-len). A client's session provides
it, and so does binlog replay (with no size limit: what was applied once applies
again). Handlers that act on the connection itself (CLIENT, MULTI, AUTH, …) take the
Session; a data handler never does, so it runs the same for a client and for replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dtm.config import Config
    from dtm.keyspace import DbView, Keyspace


class DataContext(Protocol):
    db: DbView

    @property
    def keyspace(self) -> Keyspace: ...

    @property
    def config(self) -> Config: ...
