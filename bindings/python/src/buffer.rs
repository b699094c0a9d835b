//! Borrowing the memory of Python objects: the buffer protocol (numpy arrays, bytearray,
//! memoryview, array.array, ...) and, for objects without it that speak DLPack (torch CPU
//! tensors), `numpy.from_dlpack`, which returns an array sharing their memory.
//!
//! The extension is an abi3 wheel for CPython >= 3.9, and the buffer functions joined the
//! limited API only in 3.11, so pyo3 does not offer them for this target. They (and the
//! `Py_buffer` layout below) have been exported and unchanged since CPython 3.3; 3.11 only
//! promised what was already true. Declaring them here is what the 3.11 headers declare.
//!
//! Contract: a [`View`] holds a successful `PyObject_GetBuffer` export. While it lives the
//! exporter keeps the memory `[buf, buf + len)` valid and in place (numpy and bytearray
//! refuse to resize while exported), readable, and writable when requested. The export is
//! released exactly once, in `Drop`, which must run with the interpreter attached: views
//! are created and dropped only inside functions that hold a `Python` token.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyModule;

/// CPython's `Py_buffer` (Include/pybuffer.h, identical from 3.3 to 3.14).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

unsafe extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

const PYBUF_WRITABLE: c_int = 0x0001;
const PYBUF_FORMAT: c_int = 0x0004;
const PYBUF_ND: c_int = 0x0008;
const PYBUF_STRIDES: c_int = 0x0010 | PYBUF_ND;
const PYBUF_C_CONTIGUOUS: c_int = 0x0020 | PYBUF_STRIDES;

/// Element types the package reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    U8,
    U64,
    I64,
    F32,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::U8 => 1,
            Elem::F32 => 4,
            Elem::U64 | Elem::I64 => 8,
        }
    }

    /// numpy's name of the dtype, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Elem::U8 => "uint8",
            Elem::U64 => "uint64",
            Elem::I64 => "int64",
            Elem::F32 => "float32",
        }
    }

    /// Whether a struct-module format code (native byte order) is this type.
    fn matches(self, format: &str, itemsize: usize) -> bool {
        let code = format.strip_prefix(['@', '=', '<']).unwrap_or(format);
        if itemsize != self.size() || cfg!(target_endian = "big") && format.starts_with('<') {
            return false;
        }
        match self {
            Elem::U8 => code == "B",
            Elem::U64 => code == "Q" || code == "L",
            Elem::I64 => code == "q" || code == "l",
            Elem::F32 => code == "f",
        }
    }
}

/// A C-contiguous export of a Python object's memory.
pub struct View {
    raw: Box<RawBuffer>,
    elem: Option<Elem>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("len", &self.raw.len)
            .field("elem", &self.elem)
            .finish()
    }
}

fn export(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<View> {
    let mut raw = Box::new(RawBuffer {
        buf: std::ptr::null_mut(),
        obj: std::ptr::null_mut(),
        len: 0,
        itemsize: 0,
        readonly: 0,
        ndim: 0,
        format: std::ptr::null_mut(),
        shape: std::ptr::null_mut(),
        strides: std::ptr::null_mut(),
        suboffsets: std::ptr::null_mut(),
        internal: std::ptr::null_mut(),
    });
    let flags = PYBUF_C_CONTIGUOUS | PYBUF_FORMAT | if writable { PYBUF_WRITABLE } else { 0 };
    // SAFETY: obj is a live object (the Bound proves the interpreter is attached); raw is
    // a writable Py_buffer that CPython fills on success and leaves unowned on failure.
    let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), &mut *raw, flags) };
    if rc != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(View { raw, elem: None })
}

impl View {
    /// Exports `obj` (or, for DLPack objects without the buffer protocol, a numpy array
    /// sharing its memory), C-contiguous, writable if asked, of element type `elem`.
    pub fn new(obj: &Bound<'_, PyAny>, elem: Elem, writable: bool) -> PyResult<View> {
        let py = obj.py();
        let mut view = match export(obj, writable) {
            Ok(v) => v,
            Err(first) if obj.hasattr("__dlpack__")? => {
                let np = PyModule::import(py, "numpy")?;
                let arr = np.call_method1("from_dlpack", (obj,))?;
                export(&arr, writable).map_err(|_| first)?
            }
            Err(e) => return Err(e),
        };
        let format = if view.raw.format.is_null() {
            "B"
        } else {
            // SAFETY: PYBUF_FORMAT was requested, so format is a NUL-terminated string
            // owned by the export and valid while it lives.
            unsafe { CStr::from_ptr(view.raw.format) }
                .to_str()
                .unwrap_or("?")
        };
        let itemsize = usize::try_from(view.raw.itemsize).unwrap_or(0);
        if !elem.matches(format, itemsize) {
            let found = format.to_owned();
            return Err(PyBufferError::new_err(format!(
                "expected {} elements, found buffer format {found:?} of {itemsize} bytes",
                elem.name()
            )));
        }
        view.elem = Some(elem);
        Ok(view)
    }

    /// Length in bytes.
    pub fn byte_len(&self) -> usize {
        usize::try_from(self.raw.len).unwrap_or(0)
    }

    /// Where the exported bytes are (compared with another buffer's, never read).
    pub fn extent(&self, what: &'static str) -> engram_bindings::Extent {
        engram_bindings::Extent {
            what,
            addr: self.raw.buf as usize,
            bytes: self.byte_len(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.byte_len() / self.elem.map_or(1, Elem::size)
    }

    /// Dimensions of the exporter (e.g. `[B, T]`).
    pub fn shape(&self) -> Vec<usize> {
        let nd = usize::try_from(self.raw.ndim).unwrap_or(0);
        if self.raw.shape.is_null() {
            return vec![self.len()];
        }
        // SAFETY: with PYBUF_ND the exporter provides ndim shape entries, valid while the
        // export lives.
        let dims = unsafe { std::slice::from_raw_parts(self.raw.shape, nd) };
        dims.iter()
            .map(|&d| usize::try_from(d).unwrap_or(0))
            .collect()
    }

    fn checked<T>(&self, elem: Elem) -> PyResult<()> {
        if self.elem != Some(elem) || std::mem::size_of::<T>() != elem.size() {
            return Err(PyBufferError::new_err(
                "buffer element type mismatch (a bug)",
            ));
        }
        if !(self.raw.buf as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(PyBufferError::new_err(format!(
                "buffer at {:p} is not aligned for {}",
                self.raw.buf,
                elem.name()
            )));
        }
        Ok(())
    }

    /// The elements, read-only.
    pub fn as_slice<T: Copy>(&self, elem: Elem) -> PyResult<&[T]> {
        self.checked::<T>(elem)?;
        if self.len() == 0 {
            return Ok(&[]);
        }
        // SAFETY: the export covers byte_len bytes at buf (contract above), which is
        // aligned for T (checked) and holds len() elements of T's size (format checked);
        // the returned borrow cannot outlive self, so the export outlives it.
        Ok(unsafe { std::slice::from_raw_parts(self.raw.buf.cast::<T>(), self.len()) })
    }

    /// The elements, writable (the export was requested writable).
    pub fn as_mut_slice<T: Copy>(&mut self, elem: Elem) -> PyResult<&mut [T]> {
        self.checked::<T>(elem)?;
        if self.raw.readonly != 0 {
            return Err(PyBufferError::new_err("the buffer is read-only"));
        }
        if self.len() == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in as_slice; the export is writable (checked) and &mut self makes
        // this the only Rust borrow of it.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.raw.buf.cast::<T>(), self.len()) })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: raw holds a successful export, released once here; views live only in
        // functions that hold the interpreter (module contract), so it is attached.
        unsafe { PyBuffer_Release(&mut *self.raw) };
    }
}
