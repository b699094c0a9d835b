//! engram's C ABI. `include/engram.h` is generated from this file by cbindgen
//! (`tests/header.rs` fails when it is stale; `ENGRAM_BLESS=1` rewrites it).
//!
//! Every entry point runs its body inside `catch_unwind`: no panic crosses the boundary
//! (it becomes `ENGRAM_ERR_PANIC`). Pointers are checked for NULL and alignment, lengths
//! against what the call needs; what cannot be checked (that a pointer really covers the
//! length given) is the caller's side of the contract, stated in the header.
#![allow(non_camel_case_types)]
// The exported functions take raw pointers by design, so every one that takes a pointer is
// an `unsafe extern "C" fn` (`#[unsafe(no_mangle)]`): its safety contract is the header's
// Conventions plus its own documentation. Every dereference goes through the `unsafe fn`s
// of `ptr.rs`, which state that contract; each `unsafe { ptr::...(...) }` (and
// `unsafe { handle(store) }`) inside an export applies the export's contract to that one
// argument, for the export's duration only.
#![allow(unsafe_code, clippy::missing_safety_doc)]

mod ptr;

use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use engram_bindings::{
    BackendKind, Error, Handle, OpenConfig, PendingPrefetch, Result, RowLayout, TokenIds,
};

/// Prefetch tickets a "unix:PATH" store (a client of `engram serve`) may hold unfreed:
/// with this many held, the next `engram_store_prefetch` or `engram_store_lookup_into` on
/// it fails with `ENGRAM_ERR_LIMIT` instead of waiting for a slot only the caller can free.
pub const ENGRAM_SERVICE_MAX_TICKETS: usize = 16;
/// The same for a store opened from a table directory (its prefetch slots).
pub const ENGRAM_LOCAL_MAX_TICKETS: usize = 64;

/// Return codes. Every function that returns `int` returns `ENGRAM_OK` (0) on success and
/// one of these on failure; `engram_last_error()` then holds the message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engram_status {
    /// Success.
    ENGRAM_OK = 0,
    /// A required pointer argument is NULL.
    ENGRAM_ERR_NULL = 1,
    /// An argument or option is invalid (misaligned pointer, bad enum value, not UTF-8...).
    ENGRAM_ERR_INVALID_ARGUMENT = 2,
    /// A buffer's length is not what the call needs (too short or too long).
    ENGRAM_ERR_BUFFER_SIZE = 3,
    /// The layer id is not one of the table's Engram layers.
    ENGRAM_ERR_UNKNOWN_LAYER = 4,
    /// A row id beyond its layer's table, or a token id beyond the vocabulary.
    ENGRAM_ERR_OUT_OF_RANGE = 5,
    /// The table directory (or a file in it) does not exist.
    ENGRAM_ERR_NOT_FOUND = 6,
    /// An operating-system I/O call failed.
    ENGRAM_ERR_IO = 7,
    /// The table or profile is malformed, corrupted or of an unsupported format version.
    ENGRAM_ERR_CORRUPT = 8,
    /// The tokenizer is missing, unreadable or not the one the table was built with.
    ENGRAM_ERR_TOKENIZER = 9,
    /// A backend or feature is not compiled in or not usable on this machine.
    ENGRAM_ERR_UNAVAILABLE = 10,
    /// A size is above a named limit (batch rows, queue depth, I/O workers...).
    ENGRAM_ERR_LIMIT = 11,
    /// The store's workers stopped after an earlier failure (close and reopen it), or the
    /// service of a "unix:PATH" store went away (its next call reconnects).
    ENGRAM_ERR_SHUT_DOWN = 12,
    /// Not supported by this build.
    ENGRAM_ERR_UNSUPPORTED = 13,
    /// A bug inside the library was caught at the boundary (please report it).
    ENGRAM_ERR_PANIC = 14,
    /// Any other failure.
    ENGRAM_ERR_INTERNAL = 15,
}

/// Backends for `engram_store_options.backend`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engram_backend {
    /// `$ENGRAM_IO_BACKEND` if set, else io_uring, falling back to pread.
    ENGRAM_BACKEND_AUTO = 0,
    /// Every layer read into RAM at open.
    ENGRAM_BACKEND_MEMORY = 1,
    /// Layer files memory-mapped.
    ENGRAM_BACKEND_MMAP = 2,
    /// pread on a thread pool.
    ENGRAM_BACKEND_PREAD = 3,
    /// io_uring with O_DIRECT (falls back to pread where unavailable; see the stats).
    ENGRAM_BACKEND_URING = 4,
}

/// What `engram_store_row_ids` is given.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engram_tokens {
    /// Tokenizer ids, compressed with the tokenizer given at open (`tokenizer_path`);
    /// negative ids pass through unchanged.
    ENGRAM_TOKENS_RAW = 0,
    /// Canonical (already compressed) ids.
    ENGRAM_TOKENS_CANONICAL = 1,
}

/// Row value encodings (`engram_row_layout.kind`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum engram_row_kind {
    /// `dim` bfloat16 values, little-endian.
    ENGRAM_ROW_BF16 = 0,
    /// `dim` IEEE binary16 values, little-endian.
    ENGRAM_ROW_F16 = 1,
    /// `dim` IEEE binary32 values, little-endian.
    ENGRAM_ROW_F32 = 2,
    /// `dim` FP8 E4M3 bytes, then `dim / scale_block` E8M0 scale bytes.
    ENGRAM_ROW_FP8_E4M3_E8M0 = 3,
}

/// How to open a store. Fill it with `engram_store_options_init` first, then change
/// fields; `struct_size` lets later versions add fields without breaking callers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct engram_store_options {
    /// `sizeof(engram_store_options)`, set by `engram_store_options_init`.
    pub struct_size: usize,
    /// An `engram_backend` value (default `ENGRAM_BACKEND_AUTO`).
    pub backend: i32,
    /// Check every device read against its block checksum: 1 (default) or 0 (a corrupted
    /// block on the medium then comes back as wrong rows, silently, instead of an error).
    pub verify: i32,
    /// Hot-row cache budget in bytes (default 0: no cache).
    pub cache_bytes: u64,
    /// A traffic profile (`profile.bin`) that seeds the cache, or NULL.
    pub profile_path: *const c_char,
    /// The `tokenizer.json` the table was built with (enables `ENGRAM_TOKENS_RAW`), or NULL.
    pub tokenizer_path: *const c_char,
    /// Reads in flight per reader (0: default 32).
    pub queue_depth: u32,
    /// I/O worker threads serving prefetches (0: default 2).
    pub io_workers: u32,
    /// Largest batch, rows per lookup or prefetch (0: default 65536).
    pub max_batch_rows: u32,
}

/// A row layout, as `engram_store_row_layout` reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct engram_row_layout {
    /// An `engram_row_kind` value.
    pub kind: i32,
    /// Values per row.
    pub dim: u32,
    /// Values per E8M0 scale (FP8 rows), else 0.
    pub scale_block: u32,
    /// Bytes per row.
    pub row_bytes: usize,
}

/// An open table (opaque). Thread-safe: any number of threads may call any `engram_store_*`
/// function on one store at once, except `engram_store_close`.
#[derive(Debug)]
pub struct engram_store {
    inner: Handle,
}

/// A prefetch in flight (opaque). Owns a page-aligned, page-locked buffer that receives the
/// rows. A ticket may move between threads but must not be used by two threads at once.
#[derive(Debug)]
pub struct engram_ticket {
    inner: PendingPrefetch,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL cannot be represented in a C string: cut the message there.
    let cut = message.split('\0').next().unwrap_or_default();
    let c = CString::new(cut).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn clear_last_error() {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        if !e.as_bytes().is_empty() {
            *e = CString::default();
        }
    });
}

/// Runs `body` with every panic caught; returns the status and records the message.
fn guard(function: &'static str, body: impl FnOnce() -> Result<()>) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(Error::from_panic(function, payload.as_ref())));
    match outcome {
        Ok(()) => {
            clear_last_error();
            engram_status::ENGRAM_OK as c_int
        }
        Err(e) => {
            set_last_error(&format!("{function}: {e}"));
            e.kind().code()
        }
    }
}

/// Like [`guard`] for functions that return a value: `fallback` on any failure.
fn guard_value<T>(function: &'static str, fallback: T, body: impl FnOnce() -> Result<T>) -> T {
    let mut value = None;
    guard(function, || {
        value = Some(body()?);
        Ok(())
    });
    value.unwrap_or(fallback)
}

fn backend_of(code: i32) -> Result<Option<BackendKind>> {
    use engram_backend::*;
    Ok(match code {
        x if x == ENGRAM_BACKEND_AUTO as i32 => None,
        x if x == ENGRAM_BACKEND_MEMORY as i32 => Some(BackendKind::Memory),
        x if x == ENGRAM_BACKEND_MMAP as i32 => Some(BackendKind::Mmap),
        x if x == ENGRAM_BACKEND_PREAD as i32 => Some(BackendKind::Pread),
        x if x == ENGRAM_BACKEND_URING as i32 => Some(BackendKind::Uring),
        other => {
            return Err(Error::Invalid {
                what: "engram_store_options.backend",
                reason: format!("{other} is not an engram_backend value"),
            });
        }
    })
}

fn nonzero(v: u32) -> Option<usize> {
    (v != 0).then_some(v as usize)
}

fn open_config(o: &engram_store_options) -> Result<OpenConfig> {
    if o.struct_size < std::mem::size_of::<engram_store_options>() {
        return Err(Error::Invalid {
            what: "engram_store_options.struct_size",
            reason: format!(
                "{} is smaller than this library's options ({} bytes): call \
                 engram_store_options_init first",
                o.struct_size,
                std::mem::size_of::<engram_store_options>()
            ),
        });
    }
    let verify = match o.verify {
        0 => false,
        1 => true,
        other => {
            return Err(Error::Invalid {
                what: "engram_store_options.verify",
                reason: format!("{other}: expected 0 or 1"),
            });
        }
    };
    Ok(OpenConfig {
        backend: backend_of(o.backend)?,
        cache_bytes: o.cache_bytes,
        // SAFETY: this export's # Safety contract makes `o.profile_path` NULL or valid for the call; `opt_str` checks NULL, alignment and extent.
        profile: unsafe { ptr::opt_str(o.profile_path, "profile_path") }?.map(PathBuf::from),
        queue_depth: nonzero(o.queue_depth),
        io_workers: nonzero(o.io_workers),
        verify: Some(verify),
        max_batch_rows: nonzero(o.max_batch_rows),
        // SAFETY: this export's # Safety contract makes `o.tokenizer_path` NULL or valid for the call; `opt_str` checks NULL, alignment and extent.
        tokenizer: unsafe { ptr::opt_str(o.tokenizer_path, "tokenizer_path") }?.map(PathBuf::from),
        default_tokenizer: false,
    })
}

fn defaults() -> engram_store_options {
    engram_store_options {
        struct_size: std::mem::size_of::<engram_store_options>(),
        backend: engram_backend::ENGRAM_BACKEND_AUTO as i32,
        verify: 1,
        cache_bytes: 0,
        profile_path: std::ptr::null(),
        tokenizer_path: std::ptr::null(),
        queue_depth: 0,
        io_workers: 0,
        max_batch_rows: 0,
    }
}

/// The library version, e.g. "0.1.0" (static storage). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn engram_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" after a successful call).
/// Valid until the next engram call on the same thread; never NULL. Thread-safe (each
/// thread has its own).
#[unsafe(no_mangle)]
pub extern "C" fn engram_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A static name for a status code ("ENGRAM_ERR_BUFFER_SIZE"), "unknown" for others.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn engram_status_name(status: c_int) -> *const c_char {
    let name: &'static str = match status {
        0 => "ENGRAM_OK\0",
        1 => "ENGRAM_ERR_NULL\0",
        2 => "ENGRAM_ERR_INVALID_ARGUMENT\0",
        3 => "ENGRAM_ERR_BUFFER_SIZE\0",
        4 => "ENGRAM_ERR_UNKNOWN_LAYER\0",
        5 => "ENGRAM_ERR_OUT_OF_RANGE\0",
        6 => "ENGRAM_ERR_NOT_FOUND\0",
        7 => "ENGRAM_ERR_IO\0",
        8 => "ENGRAM_ERR_CORRUPT\0",
        9 => "ENGRAM_ERR_TOKENIZER\0",
        10 => "ENGRAM_ERR_UNAVAILABLE\0",
        11 => "ENGRAM_ERR_LIMIT\0",
        12 => "ENGRAM_ERR_SHUT_DOWN\0",
        13 => "ENGRAM_ERR_UNSUPPORTED\0",
        14 => "ENGRAM_ERR_PANIC\0",
        15 => "ENGRAM_ERR_INTERNAL\0",
        _ => "unknown\0",
    };
    name.as_ptr().cast()
}

/// Fills `*opts` with the defaults (auto backend, verification on, no cache, no profile,
/// no tokenizer, default queue depth, workers and batch size). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_options_init(opts: *mut engram_store_options) -> c_int {
    guard("engram_store_options_init", || {
        // SAFETY: this export's # Safety contract makes `opts` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        *unsafe { ptr::obj_mut(opts, "opts") }? = defaults();
        Ok(())
    })
}

/// Opens the table directory `path`, or "unix:SOCKET" ("unix:SOCKET#TABLE" when the
/// service serves several tables): a table served by `engram serve`, whose backend, cache
/// and read options are the server's (setting them in `opts` is
/// `ENGRAM_ERR_INVALID_ARGUMENT`). `opts` may be NULL (defaults). On
/// success `*out` is a store to pass to `engram_store_close`; on failure `*out` is left
/// unchanged. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_open(
    path: *const c_char,
    opts: *const engram_store_options,
    out: *mut *mut engram_store,
) -> c_int {
    guard("engram_store_open", || {
        // SAFETY: this export's # Safety contract makes `path` NULL or valid for the call; `str_arg` checks NULL, alignment and extent.
        let path = unsafe { ptr::str_arg(path, "path") }?;
        let config = if opts.is_null() {
            open_config(&defaults())?
        } else {
            // SAFETY: this export's # Safety contract makes `opts` NULL or valid for the call; `obj` checks NULL, alignment and extent.
            open_config(unsafe { ptr::obj(opts, "opts") }?)?
        };
        // Check `out` before the (slow) open.
        unsafe { ptr::obj_mut(out, "out") }?;
        let inner = Handle::open(path, &config)?;
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `give` checks NULL, alignment and extent.
        unsafe { ptr::give(out, engram_store { inner }) }
    })
}

/// Closes a store (NULL: nothing). Waits for its prefetches in flight that no ticket
/// holds; tickets still alive keep the store's resources until they are freed. Must not
/// run concurrently with any other call on the same store, and the store must not be used
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_close(store: *mut engram_store) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes NULL or a store from engram_store_open, closed once.
        drop(unsafe { ptr::take(store) });
    }));
}

/// The handle behind `store`.
///
/// # Safety
/// As [`ptr::obj`]: `store` came from `engram_store_open` and is not closed, and the
/// reference is used only during the calling export.
unsafe fn handle<'a>(store: *const engram_store) -> Result<&'a Handle> {
    // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `obj` checks NULL, alignment and extent.
    Ok(&unsafe { ptr::obj(store, "store") }?.inner)
}

/// Bytes per row (0 if `store` is NULL). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_row_bytes(store: *const engram_store) -> usize {
    guard_value("engram_store_row_bytes", 0, || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        Ok(unsafe { handle(store) }?.row_bytes())
    })
}

/// Number of Engram layers in the table (0 if `store` is NULL). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_n_layers(store: *const engram_store) -> usize {
    guard_value("engram_store_n_layers", 0, || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        Ok(unsafe { handle(store) }?.layer_ids().len())
    })
}

/// Writes the table's layer ids (in table order) to `out[0..n_layers)`; `out_len` must be
/// at least `engram_store_n_layers(store)`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_layer_ids(
    store: *const engram_store,
    out: *mut u64,
    out_len: usize,
) -> c_int {
    guard("engram_store_layer_ids", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let ids = unsafe { handle(store) }?.layer_ids();
        if out_len < ids.len() {
            return Err(Error::Buffer {
                what: "layer ids output",
                unit: "entries",
                expected: ids.len(),
                found: out_len,
            });
        }
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `slice_mut` checks NULL, alignment and extent.
        unsafe { ptr::slice_mut(out, ids.len(), "out") }?.copy_from_slice(ids);
        Ok(())
    })
}

/// Rows of layer `layer_id` into `*rows`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_layer_rows(
    store: *const engram_store,
    layer_id: u32,
    rows: *mut u64,
) -> c_int {
    guard("engram_store_layer_rows", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let n = unsafe { handle(store) }?.layer_rows(u64::from(layer_id))?;
        // SAFETY: this export's # Safety contract makes `rows` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        *unsafe { ptr::obj_mut(rows, "rows") }? = n;
        Ok(())
    })
}

/// The row layout into `*out`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_row_layout(
    store: *const engram_store,
    out: *mut engram_row_layout,
) -> c_int {
    guard("engram_store_row_layout", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let info = unsafe { handle(store) }?.row_info();
        let kind = match info.layout {
            RowLayout::Bf16 => engram_row_kind::ENGRAM_ROW_BF16,
            RowLayout::F16 => engram_row_kind::ENGRAM_ROW_F16,
            RowLayout::F32 => engram_row_kind::ENGRAM_ROW_F32,
            _ => engram_row_kind::ENGRAM_ROW_FP8_E4M3_E8M0,
        };
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        *unsafe { ptr::obj_mut(out, "out") }? = engram_row_layout {
            kind: kind as i32,
            dim: u32::try_from(info.dim).map_err(|_| Error::Invalid {
                what: "dim",
                reason: format!("{} does not fit 32 bits", info.dim),
            })?,
            scale_block: info.scale_block() as u32,
            row_bytes: info.row_bytes,
        };
        Ok(())
    })
}

/// Row ids per token per layer, `(max_ngram - 1) * heads` (0 if `store` is NULL).
/// Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_n_hash_heads(store: *const engram_store) -> usize {
    guard_value("engram_store_n_hash_heads", 0, || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        Ok(unsafe { handle(store) }?.n_hash_heads())
    })
}

/// Largest n-gram order N: a token's row ids depend on it and the N - 1 tokens before it
/// (0 if `store` is NULL). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_max_ngram(store: *const engram_store) -> usize {
    guard_value("engram_store_max_ngram", 0, || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        Ok(unsafe { handle(store) }?.max_ngram())
    })
}

/// The backend in use after any fallback: "memory", "mmap", "pread" or "uring", or
/// "service(...)" of one of them for a "unix:" store (static storage; "" if `store` is
/// NULL). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_backend(store: *const engram_store) -> *const c_char {
    let name: &'static str = guard_value("engram_store_backend", "\0", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        Ok(match unsafe { handle(store) }?.backend_name() {
            "memory" => "memory\0",
            "mmap" => "mmap\0",
            "pread" => "pread\0",
            "uring" => "uring\0",
            "service(memory)" => "service(memory)\0",
            "service(mmap)" => "service(mmap)\0",
            "service(pread)" => "service(pread)\0",
            "service(uring)" => "service(uring)\0",
            _ => "\0",
        })
    });
    name.as_ptr().cast()
}

/// Reads rows `ids[0..n)` of layer `layer_id` into `out`, on the calling thread, through
/// the hot-row cache. `out_len` must be exactly `n * engram_store_row_bytes(store)`;
/// anything else is `ENGRAM_ERR_BUFFER_SIZE` and nothing is written. `ids` and `out` that
/// share a byte are `ENGRAM_ERR_INVALID_ARGUMENT` (as for every call that reads one
/// buffer and writes another). A row id beyond the
/// layer is `ENGRAM_ERR_OUT_OF_RANGE`. `ids` and `out` may be NULL only when `n` is 0.
/// Thread-safe (concurrent lookups on one store are fine; their `out` must not overlap).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_lookup_into(
    store: *const engram_store,
    layer_id: u32,
    ids: *const u64,
    n: usize,
    out: *mut u8,
    out_len: usize,
) -> c_int {
    guard("engram_store_lookup_into", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let h = unsafe { handle(store) }?;
        let need = n.saturating_mul(h.row_bytes());
        if out_len != need {
            return Err(Error::Buffer {
                what: "out (n x row_bytes)",
                unit: "bytes",
                expected: need,
                found: out_len,
            });
        }
        // SAFETY: this export's # Safety contract makes `ids` NULL or valid for the call; `in_out` checks NULL, alignment and extent.
        let (ids, out) = unsafe { ptr::in_out(ids, n, "ids", out, out_len, "out") }?;
        h.lookup_into(u64::from(layer_id), ids, out)
    })
}

/// Starts reading rows `ids[0..n)` of layer `layer_id` on the store's I/O workers and
/// returns at once with a ticket in `*out` (the ids are copied: `ids` may be reused on
/// return). Waits only for a slot another call will free: when the caller holds
/// `ENGRAM_LOCAL_MAX_TICKETS` (`ENGRAM_SERVICE_MAX_TICKETS` for "unix:PATH") unfreed
/// tickets, it fails with `ENGRAM_ERR_LIMIT` (wait on or free one first). An unknown layer
/// fails here; a bad row id fails in `engram_ticket_wait`. Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_prefetch(
    store: *const engram_store,
    layer_id: u32,
    ids: *const u64,
    n: usize,
    out: *mut *mut engram_ticket,
) -> c_int {
    guard("engram_store_prefetch", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let h = unsafe { handle(store) }?;
        // SAFETY: this export's # Safety contract makes `ids` NULL or valid for the call; `slice` checks NULL, alignment and extent.
        let ids = unsafe { ptr::slice(ids, n, "ids") }?;
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        unsafe { ptr::obj_mut(out, "out") }?;
        let inner = h.prefetch(u64::from(layer_id), ids)?;
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `give` checks NULL, alignment and extent.
        unsafe { ptr::give(out, engram_ticket { inner }) }
    })
}

/// Sets `*ready` to 1 if `engram_ticket_wait` would return without blocking, else 0.
/// Never blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_ticket_poll(
    ticket: *const engram_ticket,
    ready: *mut c_int,
) -> c_int {
    guard("engram_ticket_poll", || {
        // SAFETY: this export's # Safety contract makes `ticket` NULL or valid for the call; `obj` checks NULL, alignment and extent.
        let t = &unsafe { ptr::obj(ticket, "ticket") }?.inner;
        // SAFETY: this export's # Safety contract makes `ready` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        *unsafe { ptr::obj_mut(ready, "ready") }? = c_int::from(t.is_ready());
        Ok(())
    })
}

/// Blocks until the ticket's rows are in, then copies them to `out` (`out_len` exactly
/// `n * row_bytes`). `out` may be NULL with `out_len` 0 to only wait (then read the rows
/// in place with `engram_ticket_rows`). Returns the prefetch's own status (e.g.
/// `ENGRAM_ERR_OUT_OF_RANGE`); may be called again and returns the same rows or status.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_ticket_wait(
    ticket: *mut engram_ticket,
    out: *mut u8,
    out_len: usize,
) -> c_int {
    guard("engram_ticket_wait", || {
        // SAFETY: this export's # Safety contract makes `ticket` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        let t = &mut unsafe { ptr::obj_mut(ticket, "ticket") }?.inner;
        let rows = t.wait()?;
        if out.is_null() && out_len == 0 {
            return Ok(());
        }
        // `out` may not be the ticket's own rows (from engram_ticket_rows).
        engram_bindings::disjoint(
            engram_bindings::Extent::of(rows.as_ptr(), rows.len(), "the ticket's rows"),
            engram_bindings::Extent::of(out.cast_const(), out_len, "out"),
        )?;
        // SAFETY: this export's # Safety contract makes `out` NULL or valid for the call; `slice_mut` checks NULL, alignment and extent.
        t.wait_into(unsafe { ptr::slice_mut(out, out_len, "out") }?)
    })
}

/// Blocks until the rows are in, then points `*rows` at them inside the ticket's own
/// buffer (page-aligned and, when `RLIMIT_MEMLOCK` allows, page-locked: a DMA source) and
/// sets `*len` to `n * row_bytes`. The rows stay valid until `engram_ticket_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_ticket_rows(
    ticket: *mut engram_ticket,
    rows: *mut *const u8,
    len: *mut usize,
) -> c_int {
    guard("engram_ticket_rows", || {
        // SAFETY: this export's # Safety contract makes `ticket` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        let t = &mut unsafe { ptr::obj_mut(ticket, "ticket") }?.inner;
        // SAFETY: this export's # Safety contract makes `rows` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        let rows = unsafe { ptr::obj_mut(rows, "rows") }?;
        // SAFETY: this export's # Safety contract makes `len` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
        let len = unsafe { ptr::obj_mut(len, "len") }?;
        let data = t.wait()?;
        *rows = data.as_ptr();
        *len = data.len();
        Ok(())
    })
}

/// Frees a ticket (NULL: nothing), waiting first if its I/O is still in flight; pointers
/// from `engram_ticket_rows` become invalid. The ticket must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_ticket_free(ticket: *mut engram_ticket) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes NULL or a ticket from engram_store_prefetch, freed once.
        drop(unsafe { ptr::take(ticket) });
    }));
}

/// Hashes one sequence of token ids `tokens[0..n_tokens)` (oldest first) into the row ids
/// of layer `layer_id`: `out[t * H + j]` is head `j`'s row for the n-grams ending at
/// position `t` (H = `engram_store_n_hash_heads`, heads order-major; positions before 0
/// read as padding, so pass at least the last `max_ngram` tokens of a longer sequence).
/// `out_len` must be exactly `n_tokens * H`. `kind` is an `engram_tokens` value;
/// `ENGRAM_TOKENS_RAW` needs the store opened with `tokenizer_path`
/// (`ENGRAM_ERR_TOKENIZER` otherwise). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_row_ids(
    store: *const engram_store,
    layer_id: u32,
    tokens: *const i64,
    n_tokens: usize,
    kind: i32,
    out: *mut u64,
    out_len: usize,
) -> c_int {
    guard("engram_store_row_ids", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let h = unsafe { handle(store) }?;
        let kind = match kind {
            x if x == engram_tokens::ENGRAM_TOKENS_RAW as i32 => TokenIds::Raw,
            x if x == engram_tokens::ENGRAM_TOKENS_CANONICAL as i32 => TokenIds::Canonical,
            other => {
                return Err(Error::Invalid {
                    what: "kind",
                    reason: format!("{other} is not an engram_tokens value"),
                });
            }
        };
        let need = n_tokens.saturating_mul(h.n_hash_heads());
        if out_len != need {
            return Err(Error::Buffer {
                what: "out (n_tokens x n_hash_heads)",
                unit: "row ids",
                expected: need,
                found: out_len,
            });
        }
        let (tokens, out) =
            // SAFETY: this export's # Safety contract makes `tokens` NULL or valid for the call; `in_out` checks NULL, alignment and extent.
            unsafe { ptr::in_out(tokens, n_tokens, "tokens", out, out_len, "out") }?;
        h.row_ids(u64::from(layer_id), tokens, 1, n_tokens, kind, out)
    })
}

/// Decodes whole rows (`rows_len` a multiple of `row_bytes`) to float32 values in `out`
/// (`out_len` exactly `rows_len / row_bytes * dim` floats). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_dequantize(
    store: *const engram_store,
    rows: *const u8,
    rows_len: usize,
    out: *mut f32,
    out_len: usize,
) -> c_int {
    guard("engram_store_dequantize", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let h = unsafe { handle(store) }?;
        // SAFETY: this export's # Safety contract makes `rows` NULL or valid for the call; `in_out` checks NULL, alignment and extent.
        let (rows, out) = unsafe { ptr::in_out(rows, rows_len, "rows", out, out_len, "out") }?;
        h.dequantize(rows, out)
    })
}

/// Writes the store's counters and latencies as one NUL-terminated JSON object into
/// `buf[0..buf_len)`. Sets `*needed` (if not NULL) to the bytes required including the NUL;
/// when `buf_len` is smaller, returns `ENGRAM_ERR_BUFFER_SIZE` and writes nothing (call
/// with `buf` NULL and `buf_len` 0 to size the buffer). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_stats_json(
    store: *const engram_store,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> c_int {
    guard("engram_store_stats_json", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        let json = unsafe { handle(store) }?.stats_json()?;
        let need = json.len() + 1;
        if !needed.is_null() {
            // SAFETY: this export's # Safety contract makes `needed` NULL or valid for the call; `obj_mut` checks NULL, alignment and extent.
            *unsafe { ptr::obj_mut(needed, "needed") }? = need;
        }
        if buf_len < need {
            return Err(Error::Buffer {
                what: "stats buffer",
                unit: "bytes",
                expected: need,
                found: buf_len,
            });
        }
        // SAFETY: this export's # Safety contract makes `buf.cast` NULL or valid for the call; `slice_mut` checks NULL, alignment and extent.
        let out = unsafe { ptr::slice_mut(buf.cast::<u8>(), need, "buf") }?;
        out[..json.len()].copy_from_slice(json.as_bytes());
        out[json.len()] = 0;
        Ok(())
    })
}

/// Resets the store's counters and histograms (e.g. after warm-up). Thread-safe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_reset_stats(store: *const engram_store) -> c_int {
    guard("engram_store_reset_stats", || {
        // SAFETY: this export's # Safety contract makes `store` NULL or valid for the call; `handle` checks NULL, alignment and extent.
        unsafe { handle(store) }?.reset_stats()
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use engram_bindings::ErrorKind;

    use super::*;

    #[test]
    fn status_codes_are_the_kinds_codes() {
        use engram_status::*;
        let header_order = [
            ENGRAM_ERR_NULL,
            ENGRAM_ERR_INVALID_ARGUMENT,
            ENGRAM_ERR_BUFFER_SIZE,
            ENGRAM_ERR_UNKNOWN_LAYER,
            ENGRAM_ERR_OUT_OF_RANGE,
            ENGRAM_ERR_NOT_FOUND,
            ENGRAM_ERR_IO,
            ENGRAM_ERR_CORRUPT,
            ENGRAM_ERR_TOKENIZER,
            ENGRAM_ERR_UNAVAILABLE,
            ENGRAM_ERR_LIMIT,
            ENGRAM_ERR_SHUT_DOWN,
            ENGRAM_ERR_UNSUPPORTED,
            ENGRAM_ERR_PANIC,
            ENGRAM_ERR_INTERNAL,
        ];
        for (kind, status) in ErrorKind::ALL.iter().zip(header_order) {
            assert_eq!(kind.code(), status as i32, "{kind:?}");
            // SAFETY: engram_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(engram_status_name(kind.code())) };
            let want = format!("{status:?}");
            assert_eq!(name.to_str().expect("ascii"), want);
        }
    }
}
