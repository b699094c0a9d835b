"""engram: DeepSeek Engram conditional-memory tables, from Python.

``Store`` opens a table directory built by ``engram-build`` and serves its rows from DRAM or
NVMe (io_uring, O_DIRECT) behind an optional hot-row cache:

>>> import numpy as np, engram
>>> store = engram.Store("table", backend="uring", cache_bytes=64 << 20)
>>> ids = np.array([1, 2, 3], dtype=np.uint64)
>>> rows = store.lookup(store.layer_ids[0], ids)            # (3, row_bytes) uint8
>>> ticket = store.prefetch(store.layer_ids[0], ids)        # background read
>>> assert (ticket.wait() == rows).all()
>>> values = store.dequantize(rows)                         # (3, dim) float32

Every failure raises ``EngramError`` with the message of the underlying error, a ``kind``
(e.g. ``"buffer_size"``) and the ``code`` the C ABI returns for it.
"""

from ._engram import (
    ERROR_KINDS,
    LOCAL_MAX_TICKETS,
    SERVICE_MAX_TICKETS,
    EngramError,
    Store,
    Ticket,
    __version__,
)

__all__ = [
    "ERROR_KINDS",
    "LOCAL_MAX_TICKETS",
    "SERVICE_MAX_TICKETS",
    "EngramError",
    "Store",
    "Ticket",
    "__version__",
]
