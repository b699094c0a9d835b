"""Type stubs for the engram package (the extension module ``engram._engram``)."""

from __future__ import annotations

from os import PathLike
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str
ERROR_KINDS: list[str]
"""Every value ``EngramError.kind`` can take, in ``code`` order (1, 2, ...)."""
SERVICE_MAX_TICKETS: int
"""Tickets a ``"unix:..."`` store may hold unreleased: with this many held, the next
``prefetch`` (or ``lookup``) raises ``EngramError`` kind ``"limit"`` instead of waiting for
a slot only the caller can free (16; C: ``ENGRAM_SERVICE_MAX_TICKETS``)."""
LOCAL_MAX_TICKETS: int
"""The same for a store opened from a table directory (its prefetch slots, 64; C:
``ENGRAM_LOCAL_MAX_TICKETS``)."""

_Path = Union[str, PathLike[str]]
_Ids = Union[npt.NDArray[np.uint64], npt.NDArray[np.int64], Sequence[int], Any]
"""Row ids: a uint64/int64 array (numpy, or a torch CPU tensor through DLPack) or ints."""
_OutBuffer = Any
"""A writable C-contiguous uint8 buffer: numpy array, bytearray, torch CPU tensor."""

class EngramError(Exception):
    """Every failure of the package (never a crash). ``str(e)`` is the Rust error's message."""

    kind: str
    """The failure class: one of ``ERROR_KINDS`` ("buffer_size", "unknown_layer", ...)."""
    code: int
    """The matching C ``engram_status`` value."""

class Store:
    """An Engram table opened for lookups. Thread-safe: share one store between threads.

    ``path`` is the table directory, or ``"unix:SOCKET"`` (``"unix:SOCKET#TABLE"`` when the
    service serves several tables): a table served by ``engram serve``, whose backend, cache
    and read options are the server's (passing them raises kind ``"invalid_argument"``; a
    service that is not there raises ``"unavailable"``; one that went away ``"shut_down"``,
    and the next call reconnects).
    ``backend``: ``"memory"``, ``"mmap"``, ``"pread"``, ``"uring"`` or ``"auto"`` (default:
    ``$ENGRAM_IO_BACKEND``, then io_uring, falling back to pread). ``cache_bytes``: hot-row
    cache budget (0: none), seeded from ``profile`` (a ``profile.bin``) when given.
    ``tokenizer``: the ``tokenizer.json`` the table was built with, to hash raw token ids;
    by default found as the CLIs find it (``$ENGRAM_TOKENIZER``, then the cache
    ``scripts/fetch-tokenizer.sh`` writes) on the first ``row_ids`` of raw ids. ``queue_depth``, ``io_workers``, ``max_batch_rows``: store tuning (``None``:
    defaults 32, 2, 65536). ``verify``: check every device read against its checksum
    (``False`` turns media corruption into wrong rows, silently).
    """

    def __init__(
        self,
        path: _Path,
        backend: Optional[Literal["memory", "mmap", "pread", "uring", "auto"]] = None,
        cache_bytes: int = 0,
        profile: Optional[_Path] = None,
        tokenizer: Optional[_Path] = None,
        queue_depth: Optional[int] = None,
        io_workers: Optional[int] = None,
        verify: bool = True,
        max_batch_rows: Optional[int] = None,
    ) -> None: ...
    @property
    def row_bytes(self) -> int:
        """Bytes per row."""
    @property
    def layer_ids(self) -> list[int]:
        """The table's Engram layer ids, in table order (e.g. ``[1, 15]``)."""
    @property
    def row_layout(self) -> dict[str, Any]:
        """``{"kind": "bf16"|"f16"|"f32"|"fp8_e4m3_e8m0", "dim", "scale_block", "row_bytes"}``."""
    @property
    def n_hash_heads(self) -> int:
        """Row ids per token per layer, ``(max_ngram - 1) * heads``."""
    @property
    def max_ngram(self) -> int:
        """Largest n-gram order N: a token's rows depend on it and the N - 1 tokens before it."""
    @property
    def backend(self) -> str:
        """The backend in use after any fallback."""
    @property
    def max_batch_rows(self) -> int:
        """Largest batch (rows per lookup or prefetch)."""
    def layer_rows(self, layer_id: int) -> int:
        """Rows of layer ``layer_id``."""
    def lookup(self, layer_id: int, ids: _Ids) -> npt.NDArray[np.uint8]:
        """Rows ``ids`` of layer ``layer_id`` as a new ``(len(ids), row_bytes)`` uint8 array."""
    def lookup_into(self, layer_id: int, ids: _Ids, out: _OutBuffer) -> None:
        """Reads rows ``ids`` into ``out`` (exactly ``len(ids) * row_bytes`` bytes, uint8,
        C-contiguous, writable; zero-copy). The GIL is released during the read. ``ids``
        and ``out`` that share memory (ids a view of out) raise kind ``"invalid_argument"``."""
    def prefetch(self, layer_id: int, ids: _Ids) -> Ticket:
        """Starts reading rows on the store's I/O workers and returns without waiting for
        them. It waits only for a slot another call will free: holding ``LOCAL_MAX_TICKETS``
        (``SERVICE_MAX_TICKETS`` for a service) unreleased tickets, it raises
        ``EngramError`` kind ``"limit"``: wait on or release one first. An unknown layer
        raises now; a bad row id raises from ``Ticket.wait``."""
    def row_ids(
        self, layer_id: int, token_ids: Any, canonical: bool = False
    ) -> npt.NDArray[np.uint64]:
        """Row ids of ``token_ids`` for ``layer_id``: shape ``(T,)`` gives ``(T, H)``,
        ``(B, T)`` gives ``(B, T, H)``, H = ``n_hash_heads``, heads order-major. Position t
        hashes the n-grams ending at t within its own sequence (earlier positions read as
        padding). Raw tokenizer ids are compressed with the table's tokenizer (``tokenizer=``
        at open, else the default one); ``canonical=True`` takes already-compressed ids.
        Ids are integers (any integer dtype or Python ints; floats, NaN and booleans raise
        kind ``"invalid_argument"``, never truncated); a raw id beyond the tokenizer's
        vocabulary or a canonical id beyond the table's compressed vocabulary raises
        ``"out_of_range"`` (negative ids are padding)."""
    def dequantize(self, rows: Any) -> npt.NDArray[np.float32]:
        """Whole rows (a uint8 buffer, a multiple of ``row_bytes``) to ``(n, dim)`` float32."""
    def stats(self) -> dict[str, Any]:
        """Counters and latencies (rows requested, cache hits, device reads, ...)."""
    def reset_stats(self) -> None:
        """Resets counters and histograms (e.g. after warm-up)."""
    def close(self) -> None:
        """Closes the store; later calls raise ``EngramError`` (kind ``"shut_down"``)."""
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> bool: ...

class Ticket:
    """A prefetch in flight. Its rows land in a page-aligned, page-locked buffer the ticket
    owns (pooled per store), so no caller buffer has to outlive the I/O."""

    @property
    def rows(self) -> int:
        """Rows requested."""
    def ready(self) -> bool:
        """Whether ``wait()`` would return without blocking."""
    def wait(self, out: Optional[_OutBuffer] = None) -> Any:
        """Blocks, with the GIL released, until the rows are in (Ctrl-C raises
        ``KeyboardInterrupt`` from the wait). With ``out`` (a writable
        C-contiguous uint8 buffer of ``rows * row_bytes`` bytes) copies them there and
        returns ``out``; otherwise returns a new ``(rows, row_bytes)`` uint8 array. May be
        called again; raises ``EngramError`` with the prefetch's failure."""
    def release(self) -> None:
        """Waits for the I/O and returns the buffer to the store's pool (also on drop)."""
