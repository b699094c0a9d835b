//! The `engram._engram` extension module: `Store`, `Ticket` and `EngramError`, thin over
//! `engram-bindings` (the same implementation the C ABI uses). Arguments are validated
//! here and every failure becomes an `EngramError` carrying the Rust error's message and
//! its kind; nothing panics across the boundary (pyo3 turns a panic into an exception).

mod buffer;

use std::path::PathBuf;
use std::sync::Arc;

use engram_bindings::{ErrorKind, Handle, OpenConfig, PendingPrefetch, TokenIds, parse_backend};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyModule, PyTuple};

use buffer::{Elem, View};

create_exception!(
    _engram,
    EngramError,
    PyException,
    "Every failure of the engram package. `kind` names the failure class (\"buffer_size\", \
     \"unknown_layer\", \"out_of_range\", \"not_found\", \"corrupt\", \"tokenizer\", ...); \
     `code` is the matching C `engram_status` value."
);

/// Builds an `EngramError(message)` with `kind` and `code` attributes.
fn raise(py: Python<'_>, kind: ErrorKind, message: String) -> PyErr {
    let err = EngramError::new_err(message);
    let value = err.value(py);
    let _ = value.setattr("kind", kind.name());
    let _ = value.setattr("code", kind.code());
    err
}

fn bind_err(py: Python<'_>, e: engram_bindings::Error) -> PyErr {
    raise(py, e.kind(), e.to_string())
}

/// A Python-side failure (wrong type, wrong dtype, non-contiguous buffer) as EngramError.
fn arg_err(py: Python<'_>, what: &str, e: PyErr) -> PyErr {
    raise(py, ErrorKind::InvalidArgument, format!("{what}: {e}"))
}

fn buffer_size(py: Python<'_>, what: &str, expected: usize, found: usize, unit: &str) -> PyErr {
    raise(
        py,
        ErrorKind::BufferSize,
        format!("{what}: expected {expected} {unit}, found {found}"),
    )
}

/// Row ids from a uint64 / int64 buffer (numpy, torch via DLPack) or a sequence of ints.
enum Ids {
    Borrowed(View),
    Owned(Vec<u64>),
}

impl Ids {
    fn new(obj: &Bound<'_, PyAny>) -> PyResult<Ids> {
        let py = obj.py();
        if let Ok(v) = View::new(obj, Elem::U64, false) {
            return Ok(Ids::Borrowed(v));
        }
        if let Ok(v) = View::new(obj, Elem::I64, false) {
            let signed: &[i64] = v.as_slice(Elem::I64)?;
            let mut out = Vec::with_capacity(signed.len());
            for (index, &r) in signed.iter().enumerate() {
                out.push(u64::try_from(r).map_err(|_| {
                    raise(
                        py,
                        ErrorKind::OutOfRange,
                        format!("negative row id {r} at index {index}"),
                    )
                })?);
            }
            return Ok(Ids::Owned(out));
        }
        obj.extract::<Vec<u64>>().map(Ids::Owned).map_err(|e| {
            arg_err(
                py,
                "ids must be a uint64/int64 array, a torch CPU tensor or a sequence of \
                 non-negative ints",
                e,
            )
        })
    }

    /// Where the ids are when they are the caller's memory (a copy overlaps nothing).
    fn extent(&self) -> Option<engram_bindings::Extent> {
        match self {
            Ids::Borrowed(v) => Some(v.extent("ids")),
            Ids::Owned(_) => None,
        }
    }

    fn as_slice(&self) -> PyResult<&[u64]> {
        match self {
            Ids::Borrowed(v) => v.as_slice(Elem::U64),
            Ids::Owned(v) => Ok(v),
        }
    }
}

/// Token ids that are not an int64 buffer, as a new int64 array: integers only (any
/// integer dtype or Python ints, within int64). Floats are refused, not truncated (5.9
/// would hash as 5, NaN as whatever the cast makes of it), and so are booleans and objects.
fn integer_ids<'py>(py: Python<'py>, token_ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let np = PyModule::import(py, "numpy")?;
    let arr = np
        .call_method1("asarray", (token_ids,))
        .map_err(|e| arg_err(py, "token_ids must be integers", e))?;
    let size: usize = arr.getattr("size")?.extract()?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if size > 0 && kind != "i" && kind != "u" {
        let dtype = arr.getattr("dtype")?.str()?.to_string();
        return Err(raise(
            py,
            ErrorKind::InvalidArgument,
            format!(
                "token_ids must be integers, found dtype {dtype} (floats are not truncated:                  convert them explicitly)"
            ),
        ));
    }
    if kind == "u" && size > 0 {
        let max: u64 = arr.call_method0("max")?.extract()?;
        if max > i64::MAX as u64 {
            return Err(raise(
                py,
                ErrorKind::OutOfRange,
                format!("token id {max} is beyond int64"),
            ));
        }
    }
    np.call_method1("ascontiguousarray", (arr, "int64"))
        .map_err(|e| arg_err(py, "token_ids must be integers", e))
}

/// `numpy.empty(shape, dtype)`.
fn empty<'py>(py: Python<'py>, shape: &[usize], dtype: &str) -> PyResult<Bound<'py, PyAny>> {
    let np = PyModule::import(py, "numpy")?;
    np.call_method1("empty", (PyTuple::new(py, shape)?, dtype))
}

/// A table opened for lookups. See `engram/__init__.pyi` for the full documentation.
#[pyclass(module = "engram._engram", frozen)]
struct Store {
    inner: std::sync::RwLock<Option<Arc<Handle>>>,
}

impl Store {
    fn handle(&self, py: Python<'_>) -> PyResult<Arc<Handle>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| raise(py, ErrorKind::ShutDown, "the store is closed".into()))
    }
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (path, backend=None, cache_bytes=0, profile=None, tokenizer=None, queue_depth=None, io_workers=None, verify=true, max_batch_rows=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        backend: Option<&str>,
        cache_bytes: u64,
        profile: Option<PathBuf>,
        tokenizer: Option<PathBuf>,
        queue_depth: Option<usize>,
        io_workers: Option<usize>,
        verify: bool,
        max_batch_rows: Option<usize>,
    ) -> PyResult<Self> {
        let backend = match backend {
            Some(b) => parse_backend(b).map_err(|e| bind_err(py, e))?,
            None => None,
        };
        let config = OpenConfig {
            backend,
            cache_bytes,
            profile,
            queue_depth,
            io_workers,
            verify: Some(verify),
            max_batch_rows,
            tokenizer,
            // As the CLIs: $ENGRAM_TOKENIZER, then scripts/fetch-tokenizer.sh's cache, on
            // the first row_ids() of raw ids.
            default_tokenizer: true,
        };
        let address = path.to_str().ok_or_else(|| {
            raise(
                py,
                ErrorKind::InvalidArgument,
                format!("path {} is not UTF-8", path.display()),
            )
        })?;
        let handle = py
            .detach(|| Handle::open(address, &config))
            .map_err(|e| bind_err(py, e))?;
        Ok(Self {
            inner: std::sync::RwLock::new(Some(Arc::new(handle))),
        })
    }

    /// Bytes per row.
    #[getter]
    fn row_bytes(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.row_bytes())
    }

    /// The table's Engram layer ids, in table order.
    #[getter]
    fn layer_ids(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        Ok(self.handle(py)?.layer_ids().to_vec())
    }

    /// The row layout: {"kind", "dim", "scale_block", "row_bytes"}.
    #[getter]
    fn row_layout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = self.handle(py)?.row_info();
        let d = PyDict::new(py);
        d.set_item("kind", info.layout_name())?;
        d.set_item("dim", info.dim)?;
        d.set_item("scale_block", info.scale_block())?;
        d.set_item("row_bytes", info.row_bytes)?;
        Ok(d)
    }

    /// Row ids per token per layer, (max_ngram - 1) * heads.
    #[getter]
    fn n_hash_heads(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.n_hash_heads())
    }

    /// Largest n-gram order N.
    #[getter]
    fn max_ngram(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.max_ngram())
    }

    /// The backend in use after any fallback.
    #[getter]
    fn backend(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(self.handle(py)?.backend_name())
    }

    /// Largest batch (rows per lookup or prefetch).
    #[getter]
    fn max_batch_rows(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.max_batch_rows())
    }

    /// Rows of layer `layer_id`.
    fn layer_rows(&self, py: Python<'_>, layer_id: u64) -> PyResult<u64> {
        self.handle(py)?
            .layer_rows(layer_id)
            .map_err(|e| bind_err(py, e))
    }

    /// Reads rows into `out`, a writable C-contiguous uint8 buffer of exactly
    /// len(ids) * row_bytes bytes (numpy array, bytearray, torch CPU tensor). The GIL is
    /// released while the rows are read.
    fn lookup_into(
        &self,
        py: Python<'_>,
        layer_id: u64,
        ids: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let h = self.handle(py)?;
        let ids = Ids::new(ids)?;
        let ids_at = ids.extent();
        let ids = ids.as_slice()?;
        let mut view = View::new(out, Elem::U8, true).map_err(|e| {
            arg_err(
                py,
                "out must be a writable C-contiguous uint8 buffer (numpy array, bytearray, \
                 torch CPU tensor)",
                e,
            )
        })?;
        let need = ids.len().saturating_mul(h.row_bytes());
        if view.byte_len() != need {
            return Err(buffer_size(
                py,
                "out (len(ids) x row_bytes)",
                need,
                view.byte_len(),
                "bytes",
            ));
        }
        if let Some(at) = ids_at {
            engram_bindings::disjoint(at, view.extent("out")).map_err(|e| bind_err(py, e))?;
        }
        let out = view.as_mut_slice::<u8>(Elem::U8)?;
        py.detach(|| h.lookup_into(layer_id, ids, out))
            .map_err(|e| bind_err(py, e))
    }

    /// The rows as a new numpy uint8 array of shape (len(ids), row_bytes).
    fn lookup<'py>(
        &self,
        py: Python<'py>,
        layer_id: u64,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self.handle(py)?;
        let n = Ids::new(ids)?.as_slice()?.len();
        let arr = empty(py, &[n, h.row_bytes()], "uint8")?;
        self.lookup_into(py, layer_id, ids, &arr)?;
        Ok(arr)
    }

    /// Starts reading rows in the background; returns a Ticket.
    fn prefetch(&self, py: Python<'_>, layer_id: u64, ids: &Bound<'_, PyAny>) -> PyResult<Ticket> {
        let h = self.handle(py)?;
        let ids = Ids::new(ids)?;
        let ids = ids.as_slice()?;
        let pending = py
            .detach(|| h.prefetch(layer_id, ids))
            .map_err(|e| bind_err(py, e))?;
        Ok(Ticket {
            inner: std::sync::Mutex::new(Some(pending)),
            rows: ids.len(),
            row_bytes: h.row_bytes(),
        })
    }

    /// Row ids of token ids for layer `layer_id`: a 1-D sequence (T,) gives (T, H), a 2-D
    /// batch (B, T) gives (B, T, H), uint64. Raw tokenizer ids are compressed with the
    /// table's tokenizer (`tokenizer=` at open, else the default one, found on first use);
    /// `canonical=True` takes already-compressed ids.
    #[pyo3(signature = (layer_id, token_ids, canonical=false))]
    fn row_ids<'py>(
        &self,
        py: Python<'py>,
        layer_id: u64,
        token_ids: &Bound<'py, PyAny>,
        canonical: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self.handle(py)?;
        let view = match View::new(token_ids, Elem::I64, false) {
            Ok(v) => v,
            Err(_) => {
                let arr = integer_ids(py, token_ids)?;
                // The export holds a reference to `arr`, which keeps it alive.
                View::new(&arr, Elem::I64, false)
                    .map_err(|e| arg_err(py, "token_ids must be integers", e))?
            }
        };
        let tokens = view.as_slice::<i64>(Elem::I64)?;
        let shape = view.shape();
        let (batch, seq_len) = match shape.as_slice() {
            [t] => (1, *t),
            [b, t] => (*b, *t),
            other => {
                return Err(raise(
                    py,
                    ErrorKind::InvalidArgument,
                    format!("token_ids must be 1-D (T,) or 2-D (B, T), found shape {other:?}"),
                ));
            }
        };
        let heads = h.n_hash_heads();
        let mut out_shape = shape.clone();
        out_shape.push(heads);
        let arr = empty(py, &out_shape, "uint64")?;
        let mut out_view = View::new(&arr, Elem::U64, true)?;
        let out = out_view.as_mut_slice::<u64>(Elem::U64)?;
        let kind = if canonical {
            TokenIds::Canonical
        } else {
            TokenIds::Raw
        };
        h.row_ids(layer_id, tokens, batch, seq_len, kind, out)
            .map_err(|e| bind_err(py, e))?;
        drop(out_view);
        Ok(arr)
    }

    /// Rows (a uint8 buffer of whole rows) dequantised to a float32 array (n, dim).
    fn dequantize<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let h = self.handle(py)?;
        let view = View::new(rows, Elem::U8, false)
            .map_err(|e| arg_err(py, "rows must be a C-contiguous uint8 buffer", e))?;
        let bytes = view.as_slice::<u8>(Elem::U8)?;
        let rb = h.row_bytes();
        if !bytes.len().is_multiple_of(rb) {
            return Err(buffer_size(
                py,
                "rows (a multiple of row_bytes)",
                bytes.len().div_ceil(rb) * rb,
                bytes.len(),
                "bytes",
            ));
        }
        let n = bytes.len() / rb;
        let dim = h.row_info().dim;
        let arr = empty(py, &[n, dim], "float32")?;
        let mut out_view = View::new(&arr, Elem::F32, true)?;
        let out = out_view.as_mut_slice::<f32>(Elem::F32)?;
        h.dequantize(bytes, out).map_err(|e| bind_err(py, e))?;
        drop(out_view);
        Ok(arr)
    }

    /// Counters and latencies as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.handle(py)?.stats_json().map_err(|e| bind_err(py, e))?;
        PyModule::import(py, "json")?.call_method1("loads", (json,))
    }

    /// Resets counters and histograms.
    fn reset_stats(&self, py: Python<'_>) -> PyResult<()> {
        self.handle(py)?.reset_stats().map_err(|e| bind_err(py, e))
    }

    /// Closes the store (later calls raise EngramError); tickets still alive keep its
    /// resources until they are dropped.
    fn close(&self, py: Python<'_>) {
        let taken = self.inner.write().ok().and_then(|mut g| g.take());
        // Dropping may join I/O workers: let other Python threads run meanwhile.
        py.detach(move || drop(taken));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.handle(py) {
            Ok(h) => format!(
                "engram.Store(layers={:?}, row_bytes={}, backend={:?})",
                h.layer_ids(),
                h.row_bytes(),
                h.backend_name()
            ),
            Err(_) => "engram.Store(closed)".into(),
        }
    }
}

/// A prefetch in flight. See `engram/__init__.pyi`.
///
/// The lock is only ever taken with the GIL released (or with `try_lock`), so a thread
/// waiting on the ticket can never deadlock against a thread that holds the GIL.
#[pyclass(module = "engram._engram", frozen)]
struct Ticket {
    inner: std::sync::Mutex<Option<PendingPrefetch>>,
    rows: usize,
    row_bytes: usize,
}

fn released() -> engram_bindings::Error {
    engram_bindings::Error::Invalid {
        what: "ticket",
        reason: "it was released".into(),
    }
}

/// How long a wait runs with the GIL released before it checks for signals (Ctrl-C).
const SIGNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(20);
/// Readiness checks spun (yielding) before a wait starts to sleep between checks.
const SPIN_CHECKS: u32 = 256;
/// Sleep between readiness checks after that.
const POLL_SLEEP: std::time::Duration = std::time::Duration::from_micros(50);

impl Ticket {
    /// Whether the rows are in (or the ticket was released: `wait` then says so);
    /// `false` while another thread holds the ticket.
    fn settled(&self) -> bool {
        match self.inner.try_lock() {
            Ok(g) => g.as_ref().is_none_or(PendingPrefetch::is_ready),
            Err(_) => false,
        }
    }

    /// Waits until [`Ticket::settled`] with the GIL released, in slices of
    /// [`SIGNAL_CHECK`] between which pending signals run their handlers: Ctrl-C raises
    /// `KeyboardInterrupt` from a wait that would otherwise not return.
    fn wait_settled(&self, py: Python<'_>) -> PyResult<()> {
        let mut checks = 0u32;
        loop {
            let settled = py.detach(|| {
                let t0 = std::time::Instant::now();
                loop {
                    if self.settled() {
                        return true;
                    }
                    if t0.elapsed() >= SIGNAL_CHECK {
                        return false;
                    }
                    checks = checks.saturating_add(1);
                    if checks < SPIN_CHECKS {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(POLL_SLEEP);
                    }
                }
            });
            if settled {
                return Ok(());
            }
            py.check_signals()?;
        }
    }
}

#[pymethods]
impl Ticket {
    /// Rows requested.
    #[getter]
    fn rows(&self) -> usize {
        self.rows
    }

    /// Whether wait() would return without blocking (False while another thread waits).
    fn ready(&self, py: Python<'_>) -> PyResult<bool> {
        match self.inner.try_lock() {
            Ok(g) => match g.as_ref() {
                Some(p) => Ok(p.is_ready()),
                None => Err(bind_err(py, released())),
            },
            Err(_) => Ok(false),
        }
    }

    /// Blocks (GIL released, Ctrl-C interrupts) until the rows are in. With `out` (a writable C-contiguous
    /// uint8 buffer of rows x row_bytes bytes) copies them there and returns `out`; without,
    /// returns a new numpy uint8 array (rows, row_bytes).
    #[pyo3(signature = (out=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = match out {
            Some(o) => o.clone(),
            None => empty(py, &[self.rows, self.row_bytes], "uint8")?,
        };
        let mut view = View::new(&target, Elem::U8, true).map_err(|e| {
            arg_err(
                py,
                "out must be a writable C-contiguous uint8 buffer (numpy array, bytearray, \
                 torch CPU tensor)",
                e,
            )
        })?;
        let need = self.rows * self.row_bytes;
        if view.byte_len() != need {
            return Err(buffer_size(
                py,
                "out (rows x row_bytes)",
                need,
                view.byte_len(),
                "bytes",
            ));
        }
        let dst = view.as_mut_slice::<u8>(Elem::U8)?;
        self.wait_settled(py)?;
        py.detach(|| {
            let mut g = self.inner.lock().map_err(|_| released())?;
            g.as_mut().ok_or_else(released)?.wait_into(dst)
        })
        .map_err(|e| bind_err(py, e))?;
        drop(view);
        Ok(target)
    }

    /// Waits for the I/O (GIL released) and gives the buffer back to the store's pool;
    /// the ticket cannot be used afterwards. Dropping the ticket does the same.
    fn release(&self, py: Python<'_>) {
        py.detach(|| {
            let taken = self.inner.lock().ok().and_then(|mut g| g.take());
            drop(taken);
        });
    }

    fn __repr__(&self) -> String {
        match self.inner.try_lock().ok().as_deref() {
            Some(Some(p)) => format!("engram.Ticket(rows={}, ready={})", p.rows(), p.is_ready()),
            Some(None) => "engram.Ticket(released)".into(),
            None => format!("engram.Ticket(rows={}, waiting)", self.rows),
        }
    }
}

#[pymodule]
fn _engram(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngramError", py.get_type::<EngramError>())?;
    m.add_class::<Store>()?;
    m.add_class::<Ticket>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let kinds = PyList::empty(py);
    for k in ErrorKind::ALL {
        kinds.append(k.name())?;
    }
    m.add("ERROR_KINDS", kinds)?;
    m.add(
        "SERVICE_MAX_TICKETS",
        engram_bindings::handle::SERVICE_MAX_TICKETS,
    )?;
    m.add(
        "LOCAL_MAX_TICKETS",
        engram_bindings::handle::LOCAL_MAX_TICKETS,
    )?;
    Ok(())
}
