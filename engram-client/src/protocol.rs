//! The wire protocol, byte by byte.
//!
//! **Control** (the Unix socket, `SOCK_STREAM`): frames of a little-endian `u32` length
//! and that many bytes of JSON ([`Request`], [`Reply`]), at most [`MAX_FRAME_BYTES`]. A
//! data client sends [`Request::Hello`]; the server answers [`Reply::Welcome`] with three
//! file descriptors attached (`SCM_RIGHTS`): the shared region (a sealed memfd), the
//! client's end of the submission doorbell and of the completion doorbell (Unix stream
//! socket pairs: a ring is one byte sent with `MSG_DONTWAIT`; see [`crate::bell`]). A
//! hello must arrive whole within the server's handshake timeout, and at most
//! [`MAX_REQUEST_BYTES`] long. A control client (`engram
//! stats`, `engram reload`) sends [`Request::Stats`] or [`Request::Reload`] first.
//!
//! **Data** (the shared region, one per client; [`RegionLayout`]): a header page with the
//! ring indices, a submission ring of [`Sqe`], a completion ring of [`Cqe`], and per slot
//! an error-text area, an id area and a row area. The client writes ids into a free slot
//! and submits an entry naming the slot; the server copies the ids out, validates them,
//! reads the rows and writes them into the slot's row area, then posts a completion. A slot
//! carries one request at a time, so the completion ring never holds more entries than
//! there are slots. Either side copies what it reads from the region before validating it
//! and never follows an offset or a length the other side wrote.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServiceError, violation};

/// Protocol version; a server refuses a client of another version. Version 2: the
/// doorbells are socket pairs (version 1 shared eventfds, which a client could make
/// blocking).
pub const PROTOCOL_VERSION: u32 = 2;
/// First bytes of every region.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"ENGRAMSV");
/// Largest control frame (a welcome carries the table manifest, at most 16 MiB).
pub const MAX_FRAME_BYTES: usize = (16 << 20) + (1 << 20);
/// Largest control frame a client sends (a request; a hello names a table of at most
/// [`MAX_TABLE_NAME_BYTES`]).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Most slots (requests in flight) one client may have.
pub const MAX_SLOTS: u32 = 256;
/// Most rows one slot (one request) may carry.
pub const MAX_SLOT_ROWS: u32 = 1 << 20;
/// Bytes of error text per slot.
pub const MAX_ERROR_BYTES: usize = 256;
/// Longest table name or path in a hello.
pub const MAX_TABLE_NAME_BYTES: usize = 4096;
/// Longest spin a client may ask of the server per idle period, in microseconds.
pub const MAX_SPIN_US: u32 = 10_000;

/// Bytes per submission entry.
pub const SQE_BYTES: usize = 32;
/// Bytes per completion entry.
pub const CQE_BYTES: usize = 32;
/// Bytes of the header page.
pub const HEADER_BYTES: usize = 4096;

// Header fields (byte offsets). Each ring index sits in its own cache line.
/// Header field: the region's magic ([`REGION_MAGIC`]).
pub const H_MAGIC: usize = 0;
/// Header field: the protocol version ([`PROTOCOL_VERSION`]).
pub const H_VERSION: usize = 8;
/// Header field: slots (requests in flight) granted.
pub const H_SLOTS: usize = 12;
/// Header field: rows per slot granted.
pub const H_SLOT_ROWS: usize = 16;
/// Header field: bytes per row.
pub const H_ROW_BYTES: usize = 20;
/// Submission ring head (written by the server).
pub const H_SQ_HEAD: usize = 64;
/// Submission ring tail (written by the client).
pub const H_SQ_TAIL: usize = 128;
/// Completion ring head (written by the client).
pub const H_CQ_HEAD: usize = 192;
/// Completion ring tail (written by the server).
pub const H_CQ_TAIL: usize = 256;
/// Server flags ([`FLAG_SPINNING`]).
pub const H_SERVER_FLAGS: usize = 320;
/// Client flags ([`FLAG_SPINNING`]).
pub const H_CLIENT_FLAGS: usize = 384;

/// The side is polling the ring and needs no doorbell.
pub const FLAG_SPINNING: u32 = 1;

/// Read rows `ids` of `layer` into the slot's row area.
pub const OP_LOOKUP: u32 = 1;
/// Warm rows `ids` of `layer` into the server's cache (no rows come back).
pub const OP_SPECULATE: u32 = 2;
/// Cancel the speculation whose tag is `tag` (no slot, no completion).
pub const OP_CANCEL: u32 = 3;
/// Slot value of an entry that uses none.
pub const NO_SLOT: u32 = u32::MAX;

/// Completed; rows are in the slot (lookups) or the speculation was taken.
pub const ST_OK: u32 = 0;
/// Failed; the slot's error area holds `detail` bytes of text.
pub const ST_ERROR: u32 = 1;
/// The speculation was not taken (no cache, resident backend, or too many pending).
pub const ST_NOT_TAKEN: u32 = 2;
/// The table was replaced by one of another shape; reconnect.
pub const ST_TABLE_CHANGED: u32 = 3;

/// Where everything lives in one client's region. Both sides compute it from
/// (`slots`, `slot_rows`, `row_bytes`); nothing else about it crosses the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionLayout {
    /// Slots (requests in flight) granted.
    pub slots: u32,
    /// Rows per slot (the most ids one request carries).
    pub slot_rows: u32,
    /// Bytes per row (the table's `row_bytes`).
    pub row_bytes: u32,
    /// Entries per ring (twice the slots: room for cancels beside every slot's request).
    pub ring: u32,
    /// Offset of the submission ring.
    pub sq: usize,
    /// Offset of the completion ring.
    pub cq: usize,
    /// Offset of the slots' error text areas ([`MAX_ERROR_BYTES`] each).
    pub errors: usize,
    /// Offset of the slots' id areas (`slot_rows` x u64 each).
    pub ids: usize,
    /// Offset of the slots' row areas (`row_stride` apart).
    pub rows: usize,
    /// Bytes between two slots' row areas (a multiple of 64).
    pub row_stride: usize,
    /// Region size (a multiple of 4096).
    pub bytes: usize,
}

fn add(a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).ok_or_else(too_large)
}

fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(too_large)
}

fn too_large() -> ServiceError {
    ServiceError::Invalid {
        what: "region layout",
        reason: "its size overflows".into(),
    }
}

fn round_up(v: usize, to: usize) -> Result<usize> {
    Ok(add(v, to - 1)? / to * to)
}

impl RegionLayout {
    /// The layout for `slots` (a power of two, at most [`MAX_SLOTS`]) of `slot_rows` rows
    /// (at most [`MAX_SLOT_ROWS`]) of `row_bytes` bytes.
    pub fn new(slots: u32, slot_rows: u32, row_bytes: u32) -> Result<Self> {
        if slots == 0 || !slots.is_power_of_two() || slots > MAX_SLOTS {
            return Err(ServiceError::Invalid {
                what: "slots",
                reason: format!("{slots}: expected a power of two from 1 to {MAX_SLOTS}"),
            });
        }
        if slot_rows == 0 || slot_rows > MAX_SLOT_ROWS {
            return Err(ServiceError::Limit {
                what: "rows per slot",
                name: "MAX_SLOT_ROWS",
                limit: u64::from(MAX_SLOT_ROWS),
                found: u64::from(slot_rows),
            });
        }
        if row_bytes == 0 {
            return Err(ServiceError::Invalid {
                what: "row bytes",
                reason: "0".into(),
            });
        }
        let (n, r, rb) = (slots as usize, slot_rows as usize, row_bytes as usize);
        let ring = slots * 2;
        let sq = HEADER_BYTES;
        let cq = add(sq, mul(ring as usize, SQE_BYTES)?)?;
        let errors = add(cq, mul(ring as usize, CQE_BYTES)?)?;
        let ids = round_up(add(errors, mul(n, MAX_ERROR_BYTES)?)?, 64)?;
        let rows = round_up(add(ids, mul(mul(n, r)?, 8)?)?, 4096)?;
        let row_stride = round_up(mul(r, rb)?, 64)?;
        let bytes = round_up(add(rows, mul(n, row_stride)?)?, 4096)?;
        Ok(Self {
            slots,
            slot_rows,
            row_bytes,
            ring,
            sq,
            cq,
            errors,
            ids,
            rows,
            row_stride,
            bytes,
        })
    }

    /// Offset of submission entry `index` (any u32: taken modulo the ring).
    pub fn sqe(&self, index: u32) -> usize {
        self.sq + (index % self.ring) as usize * SQE_BYTES
    }

    /// Offset of completion entry `index` (any u32: taken modulo the ring).
    pub fn cqe(&self, index: u32) -> usize {
        self.cq + (index % self.ring) as usize * CQE_BYTES
    }

    /// Offset of slot `slot`'s error text.
    pub fn error(&self, slot: u32) -> usize {
        debug_assert!(slot < self.slots);
        self.errors + slot as usize * MAX_ERROR_BYTES
    }

    /// Offset of slot `slot`'s ids (`slot_rows` x u64 LE).
    pub fn ids(&self, slot: u32) -> usize {
        debug_assert!(slot < self.slots);
        self.ids + slot as usize * self.slot_rows as usize * 8
    }

    /// Offset of slot `slot`'s rows (`slot_rows` x `row_bytes`).
    pub fn rows(&self, slot: u32) -> usize {
        debug_assert!(slot < self.slots);
        self.rows + slot as usize * self.row_stride
    }
}

/// A submission entry (32 bytes, little-endian): op, slot, layer, rows, tag, 8 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqe {
    /// [`OP_LOOKUP`], [`OP_SPECULATE`] or [`OP_CANCEL`].
    pub op: u32,
    /// The slot whose id area holds the request's ids and whose row area gets its rows ([`NO_SLOT`] for a cancel).
    pub slot: u32,
    /// Layer index in the table (not the layer id).
    pub layer: u32,
    /// Ids in the slot's id area (at most `slot_rows`).
    pub rows: u32,
    /// The client's request number, echoed in the completion (and named by a cancel).
    pub tag: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Sqe {
    /// The entry's 32 bytes as they sit in the ring.
    pub fn encode(&self) -> [u8; SQE_BYTES] {
        let mut b = [0u8; SQE_BYTES];
        b[0..4].copy_from_slice(&self.op.to_le_bytes());
        b[4..8].copy_from_slice(&self.slot.to_le_bytes());
        b[8..12].copy_from_slice(&self.layer.to_le_bytes());
        b[12..16].copy_from_slice(&self.rows.to_le_bytes());
        b[16..24].copy_from_slice(&self.tag.to_le_bytes());
        b
    }

    /// Reads an entry from the ring (values are checked by the server, not here).
    pub fn decode(b: &[u8; SQE_BYTES]) -> Self {
        Self {
            op: u32_at(b, 0),
            slot: u32_at(b, 4),
            layer: u32_at(b, 8),
            rows: u32_at(b, 12),
            tag: u64_at(b, 16),
        }
    }
}

/// A completion entry (32 bytes, little-endian): slot, status, tag, detail, 12 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    /// The slot the request used ([`NO_SLOT`] for a speculation).
    pub slot: u32,
    /// [`ST_OK`], [`ST_ERROR`], [`ST_NOT_TAKEN`] or [`ST_TABLE_CHANGED`].
    pub status: u32,
    /// The request's tag, echoed.
    pub tag: u64,
    /// Bytes of error text in the slot's error area (status [`ST_ERROR`]).
    pub detail: u32,
}

impl Cqe {
    /// The entry's 32 bytes as they sit in the ring.
    pub fn encode(&self) -> [u8; CQE_BYTES] {
        let mut b = [0u8; CQE_BYTES];
        b[0..4].copy_from_slice(&self.slot.to_le_bytes());
        b[4..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..16].copy_from_slice(&self.tag.to_le_bytes());
        b[16..20].copy_from_slice(&self.detail.to_le_bytes());
        b
    }

    /// Reads an entry from the ring (values are checked by the client, not here).
    pub fn decode(b: &[u8; CQE_BYTES]) -> Self {
        Self {
            slot: u32_at(b, 0),
            status: u32_at(b, 4),
            tag: u64_at(b, 8),
            detail: u32_at(b, 16),
        }
    }
}

/// A control request (client to server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach to a table: `table` names it (a served table's name or path; none when the
    /// server serves one table). The server may grant fewer slots or rows than asked.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The table to attach to (a served table's name or path).
        table: Option<String>,
        /// Slots (requests in flight) asked for.
        slots: u32,
        /// Rows per slot asked for.
        slot_rows: u32,
        /// Microseconds the server polls this client's ring before sleeping.
        server_spin_us: u32,
    },
    /// Counters and latencies (as a first message: every table and client; from an
    /// attached client: its table).
    Stats,
    /// Reopen every table (the server's owner only).
    Reload,
}

/// A control reply (server to client).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The client is attached; the region and doorbells come with this frame.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        version: u32,
        /// The client's number on this server.
        client_id: u64,
        /// The name of the table attached.
        table: String,
        /// The table's `manifest.json`.
        manifest: String,
        /// The table's store backend (`uring`, `pread`, ...).
        backend: String,
        /// Slots granted (at most those asked).
        slots: u32,
        /// Rows per slot granted.
        slot_rows: u32,
    },
    /// The server refused the client (credentials, limits, unknown table).
    Refused {
        /// Why.
        reason: String,
    },
    /// Counters and latencies (the answer to [`Request::Stats`]).
    Stats(crate::stats::ServiceStats),
    /// Tables reopened (the answer to [`Request::Reload`]).
    Reloaded {
        /// What happened to each table.
        tables: Vec<ReloadOutcome>,
    },
    /// A request failed.
    Error {
        /// Why.
        reason: String,
    },
}

/// What a reload did to one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The table's name.
    pub table: String,
    /// `reloaded`, `reloaded (new shape: ...)` or `failed: ...` (the old table stays).
    pub outcome: String,
}

/// Why two manifests cannot serve the same clients (row shape or addressing differs), or
/// `None` when a client of one can use the other.
pub fn incompatible(a: &engram_store::Manifest, b: &engram_store::Manifest) -> Option<String> {
    if a.row_bytes != b.row_bytes || a.row_layout != b.row_layout || a.dim != b.dim {
        return Some(format!(
            "rows of {} bytes ({:?} x {}), now {} bytes ({:?} x {})",
            a.row_bytes, a.row_layout, a.dim, b.row_bytes, b.row_layout, b.dim
        ));
    }
    if a.tokenizer_sha256 != b.tokenizer_sha256 {
        return Some("another tokenizer".into());
    }
    if a.config != b.config || a.compressed_vocab_size != b.compressed_vocab_size {
        return Some("other addressing constants".into());
    }
    let rows = |m: &engram_store::Manifest| m.layers.iter().map(|l| l.rows).collect::<Vec<_>>();
    if rows(a) != rows(b) {
        return Some(format!("layer rows {:?}, now {:?}", rows(a), rows(b)));
    }
    None
}

/// Checks that a ring's `tail - head` (indices read from the peer) is at most `ring`.
pub fn ring_used(
    peer: &'static str,
    what: &'static str,
    head: u32,
    tail: u32,
    ring: u32,
) -> Result<u32> {
    let used = tail.wrapping_sub(head);
    if used > ring {
        return Err(violation(peer, what, format!("at most {ring}"), used));
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let s = Sqe {
            op: OP_LOOKUP,
            slot: 3,
            layer: 1,
            rows: 48,
            tag: u64::MAX - 5,
        };
        assert_eq!(Sqe::decode(&s.encode()), s);
        let c = Cqe {
            slot: 7,
            status: ST_ERROR,
            tag: 99,
            detail: 12,
        };
        assert_eq!(Cqe::decode(&c.encode()), c);
    }

    #[test]
    fn layout_is_disjoint_and_in_bounds() {
        let l = RegionLayout::new(16, 48, 264).expect("layout");
        assert_eq!(l.bytes % 4096, 0);
        assert!(l.cqe(l.ring - 1) + CQE_BYTES <= l.errors);
        assert!(l.error(15) + MAX_ERROR_BYTES <= l.ids);
        assert!(l.ids(15) + 48 * 8 <= l.rows);
        assert!(l.rows(15) + 48 * 264 <= l.bytes);
        assert_eq!(l.sqe(l.ring), l.sqe(0));
        assert!(RegionLayout::new(3, 48, 264).is_err());
        assert!(RegionLayout::new(16, MAX_SLOT_ROWS + 1, 264).is_err());
        assert!(RegionLayout::new(MAX_SLOTS, MAX_SLOT_ROWS, u32::MAX).is_ok());
    }

    #[test]
    fn ring_indices_from_the_peer_are_checked() {
        assert_eq!(ring_used("client", "sq", u32::MAX, 1, 4).ok(), Some(2));
        assert!(ring_used("client", "sq", 0, 5, 4).is_err());
        assert!(ring_used("client", "sq", 5, 0, 4).is_err());
    }
}
