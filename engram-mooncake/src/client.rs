//! The Mooncake Store client: `mooncake.store.MooncakeDistributedStore` from the
//! `mooncake-transfer-engine` wheel, driven through an embedded CPython (the wheel ships
//! no C API). Buffers stay Rust-owned: their addresses are registered with the client and
//! passed to its `*_from` / `get_into_ranges` calls, which move bytes without Python
//! copies. Without the `python` feature every constructor returns
//! [`Error::NotCompiled`](crate::Error::NotCompiled).
//!
//! Memory contract for callers of [`Client::register`] and the ranged calls: an address
//! range handed to the client is owned by the caller, stays allocated and untouched by
//! anything else until the call returns, and a registered allocation is unregistered
//! before it is freed (see `engine.rs` and `publish.rs`). The compiler cannot check any of
//! it (the addresses are `usize`, and the transfer engine writes through them from its own
//! threads), so the three functions that take addresses are `unsafe fn`, each with its
//! `# Safety` section, and every caller states in a `SAFETY:` comment why its range
//! qualifies. This module says so for the crate's `deny(unsafe_code)`.
#![allow(unsafe_code)]

use crate::config::ClientConfig;
use crate::error::Result;

/// Replication of objects written by a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// Copies on distinct segments.
    pub replicas: u32,
    /// Never evicted (objects are otherwise leased and evictable under memory pressure).
    pub hard_pin: bool,
    /// Place the first copy on this segment (a client's hostname, [`Client::hostname`]).
    pub preferred_segment: Option<String>,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            replicas: 1,
            hard_pin: true,
            preferred_segment: None,
        }
    }
}

/// Most replicas accepted.
pub const MAX_REPLICAS: u32 = 16;

/// Ranged reads of one `get_into_ranges` call into one registered buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangedGet {
    /// Distinct keys (a key may appear once per call).
    pub keys: Vec<String>,
    /// (keys, ranges) offsets into the buffer, offsets into the object, lengths
    pub dst: Vec<Vec<u64>>,
    pub src: Vec<Vec<u64>>,
    pub len: Vec<Vec<u64>>,
}

impl RangedGet {
    pub fn clear(&mut self) {
        self.keys.clear();
        self.dst.clear();
        self.src.clear();
        self.len.clear();
    }
}

#[cfg(feature = "python")]
mod imp {
    use std::sync::OnceLock;

    use pyo3::prelude::*;
    use pyo3::types::PyBytes;

    use super::{RangedGet, Replication};
    use crate::config::ClientConfig;
    use crate::error::{Error, Result};

    /// A connected client (one `MooncakeDistributedStore`).
    #[derive(Debug)]
    pub struct Client {
        store: Py<PyAny>,
        module: Py<PyAny>,
        config: ClientConfig,
    }

    fn py_err(op: &'static str) -> impl Fn(PyErr) -> Error {
        move |e| Error::Python {
            op,
            reason: e.to_string(),
        }
    }

    /// glog's minimum level (0 INFO .. 3 FATAL). Mooncake's library sets glog's level
    /// itself when it loads (from `MC_LOG_LEVEL`, INFO by default), over this variable, so
    /// the client sets it again in the glog that library loaded ([`set_glog_level`]).
    const GLOG_LEVEL_ENV: &str = "GLOG_minloglevel";
    /// Mooncake's own level variable (TRACE, INFO, WARNING, ERROR): when set and
    /// `GLOG_minloglevel` is not, the client leaves Mooncake's level as that says.
    const MOONCAKE_LOG_LEVEL_ENV: &str = "MC_LOG_LEVEL";
    /// Mooncake's log level unless `GLOG_minloglevel` or `MC_LOG_LEVEL` say otherwise:
    /// fatal only (its INFO lines, and an ERROR line even on success, stay off stderr).
    const QUIET_GLOG_LEVEL: i32 = 3;
    /// Sets `FLAGS_minloglevel` (a C++ `int32`, mangled name below) in every glog library
    /// mapped into this process (Mooncake's wheel bundles its own `libglog-HASH.so`, loaded
    /// with local symbols: found through `/proc/self/maps`); leaves `found` = how many.
    const SET_GLOG_LEVEL: &std::ffi::CStr = c"
import ctypes, os
found = 0
with open('/proc/self/maps') as maps:
    paths = sorted({l.split()[-1] for l in maps if '/libglog' in l.split()[-1]})
for path in paths:
    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    ctypes.c_int.in_dll(lib, '_ZN3fLI17FLAGS_minloglevelE').value = level
    found += 1
";
    /// The address Mooncake's TCP transport binds (default: this client's local hostname).
    const TCP_BIND_ENV: &str = "MC_TCP_BIND_ADDRESS";

    /// Starts the interpreter once, adds the venv's site-packages, imports the module.
    fn module(config: &ClientConfig) -> Result<Py<PyAny>> {
        static MODULE: OnceLock<std::result::Result<Py<PyAny>, String>> = OnceLock::new();
        let unavailable = |reason: String| Error::Unavailable {
            master: config.master.clone(),
            reason,
        };
        let r = MODULE.get_or_init(|| {
            Python::initialize();
            Python::attach(|py| -> std::result::Result<Py<PyAny>, String> {
                // Its TCP transport binds where this client says other clients reach it.
                let mut defaults = Vec::new();
                if config.local_hostname.parse::<std::net::IpAddr>().is_ok() {
                    defaults.push((TCP_BIND_ENV, config.local_hostname.clone()));
                }
                for (k, v) in defaults {
                    py.import("os")
                        .and_then(|os| os.getattr("environ"))
                        .and_then(|env| env.call_method1("setdefault", (k, v)))
                        .map_err(|e| format!("setting {k}: {e}"))?;
                }
                if let Some(venv) = &config.venv {
                    let site = py.import("site").and_then(|site| {
                        let lib = venv.join("lib");
                        // lib/pythonX.Y/site-packages, whatever X.Y the venv has.
                        let entries = std::fs::read_dir(&lib).map_err(|e| {
                            pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", lib.display()))
                        })?;
                        for entry in entries.flatten() {
                            let sp = entry.path().join("site-packages");
                            if sp.is_dir() {
                                site.call_method1("addsitedir", (sp.to_string_lossy(),))?;
                            }
                        }
                        Ok(())
                    });
                    site.map_err(|e| format!("adding the venv {}: {e}", venv.display()))?;
                }
                let module = py.import("mooncake.store");
                if module.is_ok() {
                    set_glog_level(py);
                }
                module.map(|m| m.into_any().unbind()).map_err(|e| {
                    format!(
                        "cannot import mooncake.store ({e}); install it with \
                             `scripts/mooncake-local.sh start` (into {}), or pip install \
                             mooncake-transfer-engine-non-cuda into a venv and set {}",
                        crate::config::LOCAL_VENV,
                        crate::config::VENV_ENV
                    )
                })
            })
        });
        match r {
            Ok(m) => Ok(Python::attach(|py| m.clone_ref(py))),
            Err(why) => Err(unavailable(why.clone())),
        }
    }

    /// Mooncake logs through glog: keep its lines off stderr unless asked for
    /// (`GLOG_minloglevel=0` shows them all; `MC_LOG_LEVEL` alone keeps Mooncake's own
    /// choice). Runs once, after the module's library has loaded (and set its level) and
    /// before any client logs. A failure only costs quiet: it is logged, never an error.
    fn set_glog_level(py: Python<'_>) {
        let asked = std::env::var(GLOG_LEVEL_ENV).ok();
        let level = match asked.as_deref().map(str::trim) {
            Some(v) => match v.parse::<i32>() {
                Ok(l) => l.clamp(0, 3),
                Err(_) => {
                    tracing::warn!(target: "engram_mooncake", "{GLOG_LEVEL_ENV}={v:?} is not 0..3; Mooncake logs at its own level");
                    return;
                }
            },
            None if std::env::var_os(MOONCAKE_LOG_LEVEL_ENV).is_some() => return,
            None => QUIET_GLOG_LEVEL,
        };
        let run = || -> PyResult<usize> {
            let vars = pyo3::types::PyDict::new(py);
            vars.set_item("level", level)?;
            py.run(SET_GLOG_LEVEL, None, Some(&vars))?;
            vars.get_item("found")?.map_or(Ok(0), |n| n.extract())
        };
        match run() {
            Ok(0) => {
                tracing::debug!(target: "engram_mooncake", "no glog library mapped: Mooncake's log level left as it is")
            }
            Ok(n) => {
                tracing::debug!(target: "engram_mooncake", level, libraries = n, "Mooncake's glog level set")
            }
            Err(e) => {
                tracing::debug!(target: "engram_mooncake", "setting Mooncake's glog level: {e}")
            }
        }
    }

    impl Client {
        /// Connects to the master (after a quick reachability probe) and mounts
        /// `segment_bytes` of this process's memory into the cluster.
        pub fn connect(config: &ClientConfig) -> Result<Self> {
            config.validate()?;
            config.probe()?;
            let module = module(config)?;
            let store = Python::attach(|py| -> Result<Py<PyAny>> {
                let m = module.bind(py);
                let store = m
                    .getattr("MooncakeDistributedStore")
                    .and_then(|c| c.call0())
                    .map_err(py_err("create"))?;
                let rc: i64 = store
                    .call_method1(
                        "setup",
                        (
                            config.local_hostname.as_str(),
                            config.metadata.as_str(),
                            config.segment_bytes,
                            config.local_buffer_bytes,
                            config.protocol.as_str(),
                            config.rdma_devices.as_str(),
                            config.master.as_str(),
                        ),
                    )
                    .and_then(|r| r.extract())
                    .map_err(py_err("setup"))?;
                if rc != 0 {
                    return Err(Error::Unavailable {
                        master: config.master.clone(),
                        reason: format!("client setup returned {rc}"),
                    });
                }
                Ok(store.unbind())
            })?;
            tracing::info!(target: "engram_mooncake", master = %config.master, protocol = %config.protocol, segment_bytes = config.segment_bytes, "connected to Mooncake");
            Ok(Self {
                store,
                module,
                config: config.clone(),
            })
        }

        pub fn config(&self) -> &ClientConfig {
            &self.config
        }

        fn call_i64<'py, A>(&self, py: Python<'py>, op: &'static str, args: A) -> Result<i64>
        where
            A: pyo3::call::PyCallArgs<'py>,
        {
            self.store
                .bind(py)
                .call_method1(op, args)
                .and_then(|r| r.extract())
                .map_err(py_err(op))
        }

        /// Registers `[ptr, ptr + len)` for transfers (see the module's memory contract).
        ///
        /// # Safety
        /// `[ptr, ptr + len)` is one live allocation the caller owns, which stays allocated
        /// until [`Client::unregister`] is called with `ptr`; the transfer engine may write
        /// it during any later ranged call on this client.
        pub unsafe fn register(&self, ptr: usize, len: usize) -> Result<()> {
            let rc = Python::attach(|py| self.call_i64(py, "register_buffer", (ptr, len)))?;
            if rc != 0 {
                return Err(Error::Unavailable {
                    master: self.config.master.clone(),
                    reason: format!("register_buffer of {len} bytes returned {rc}"),
                });
            }
            Ok(())
        }

        /// Unregisters the allocation starting at `ptr`.
        ///
        /// # Safety
        /// `ptr` was registered with [`Client::register`] and no transfer into or out of it
        /// is running (the transfer engine would otherwise touch memory it no longer owns).
        pub unsafe fn unregister(&self, ptr: usize) -> Result<()> {
            let rc = Python::attach(|py| self.call_i64(py, "unregister_buffer", (ptr,)))?;
            if rc != 0 {
                tracing::warn!(target: "engram_mooncake", "unregister_buffer returned {rc}");
            }
            Ok(())
        }

        /// This client's segment name (`host:port`), for [`Replication::preferred_segment`].
        pub fn hostname(&self) -> Result<String> {
            Python::attach(|py| {
                self.store
                    .bind(py)
                    .call_method0("get_hostname")
                    .and_then(|v| v.extract())
                    .map_err(py_err("get_hostname"))
            })
        }

        fn replicate_config<'py>(
            &self,
            py: Python<'py>,
            r: &Replication,
        ) -> Result<Bound<'py, PyAny>> {
            let m = self.module.bind(py);
            let c = m
                .getattr("ReplicateConfig")
                .and_then(|c| c.call0())
                .map_err(py_err("ReplicateConfig"))?;
            c.setattr("replica_num", r.replicas)
                .and_then(|()| c.setattr("with_hard_pin", r.hard_pin))
                .map_err(py_err("ReplicateConfig"))?;
            if let Some(seg) = &r.preferred_segment {
                c.setattr("preferred_segment", seg.as_str())
                    .map_err(py_err("ReplicateConfig"))?;
            }
            Ok(c)
        }

        /// Writes (insert or replace) objects `keys[i]` from registered memory
        /// `[ptrs[i], ptrs[i] + sizes[i])`; one status per key (0: done).
        ///
        /// # Safety
        /// Every `[ptrs[i], ptrs[i] + sizes[i])` lies inside one allocation registered with
        /// this client ([`Client::register`]) and initialised, and nothing writes it until
        /// this call returns (the engine reads it from other threads meanwhile).
        pub unsafe fn upsert_from(
            &self,
            keys: &[String],
            ptrs: &[usize],
            sizes: &[usize],
            r: &Replication,
        ) -> Result<Vec<i64>> {
            Python::attach(|py| {
                let c = self.replicate_config(py, r)?;
                self.store
                    .bind(py)
                    .call_method1(
                        "batch_upsert_from",
                        (keys.to_vec(), ptrs.to_vec(), sizes.to_vec(), c),
                    )
                    .and_then(|v| v.extract())
                    .map_err(py_err("batch_upsert_from"))
            })
        }

        /// Writes a small object from bytes.
        pub fn upsert_bytes(&self, key: &str, bytes: &[u8], r: &Replication) -> Result<i64> {
            Python::attach(|py| {
                let c = self.replicate_config(py, r)?;
                self.store
                    .bind(py)
                    .call_method1("upsert", (key, PyBytes::new(py, bytes), c))
                    .and_then(|v| v.extract())
                    .map_err(py_err("upsert"))
            })
        }

        /// Whether each key exists: 1 yes, 0 no, negative an error.
        pub fn exist(&self, keys: &[String]) -> Result<Vec<i64>> {
            Python::attach(|py| {
                self.store
                    .bind(py)
                    .call_method1("batch_is_exist", (keys.to_vec(),))
                    .and_then(|v| v.extract())
                    .map_err(py_err("batch_is_exist"))
            })
        }

        /// A small object's bytes, `Ok(None)` when it does not exist; errors above `limit`.
        pub fn get_bytes(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>> {
            Python::attach(|py| {
                let size = self.call_i64(py, "get_size", (key,))?;
                if size == crate::error::OBJECT_NOT_FOUND {
                    return Ok(None);
                }
                if size < 0 {
                    return Err(Error::Object {
                        op: "get_size",
                        key: key.to_string(),
                        code: size,
                        name: crate::error::code_name(size),
                    });
                }
                if size as u64 > limit {
                    return Err(Error::Limit {
                        what: "object bytes",
                        name: "object limit",
                        limit,
                        found: size as u64,
                    });
                }
                let b = self
                    .store
                    .bind(py)
                    .call_method1("get", (key,))
                    .map_err(py_err("get"))?;
                let b = b.cast::<PyBytes>().map_err(|e| Error::Python {
                    op: "get",
                    reason: e.to_string(),
                })?;
                let bytes = b.as_bytes();
                if bytes.len() as i64 != size {
                    return Err(Error::Object {
                        op: "get",
                        key: key.to_string(),
                        code: -1,
                        name: "returned a different size than get_size",
                    });
                }
                Ok(Some(bytes.to_vec()))
            })
        }

        /// One `get_into_ranges` into the registered buffer at `base`: per key, per range,
        /// the bytes read or a negative error code.
        ///
        /// # Safety
        /// `base` is the start of an allocation registered with this client
        /// ([`Client::register`]), every `base + g.dst[k][j] .. + g.len[k][j]` lies inside
        /// it, and nothing reads or writes those bytes until this call returns (the engine
        /// writes them from other threads).
        pub unsafe fn get_ranges(&self, base: usize, g: &RangedGet) -> Result<Vec<Vec<i64>>> {
            Python::attach(|py| {
                let mut r: Vec<Vec<Vec<i64>>> = self
                    .store
                    .bind(py)
                    .call_method1(
                        "get_into_ranges",
                        (
                            vec![base],
                            vec![g.keys.clone()],
                            vec![g.dst.clone()],
                            vec![g.src.clone()],
                            vec![g.len.clone()],
                        ),
                    )
                    .and_then(|v| v.extract())
                    .map_err(py_err("get_into_ranges"))?;
                Ok(r.pop().unwrap_or_default())
            })
        }

        /// Removes every object whose key starts with `prefix` (lease checks skipped);
        /// returns how many.
        pub fn remove_prefix(&self, prefix: &str) -> Result<i64> {
            let mut pattern = String::from("^");
            for c in prefix.chars() {
                if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                    pattern.push(c);
                } else {
                    pattern.push('\\');
                    pattern.push(c);
                }
            }
            Python::attach(|py| self.call_i64(py, "remove_by_regex", (pattern.as_str(), true)))
        }

        /// Removes one object (lease checks skipped); 0 or a negative code.
        pub fn remove(&self, key: &str) -> Result<i64> {
            Python::attach(|py| self.call_i64(py, "remove", (key, true)))
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            Python::attach(|py| {
                if let Err(e) = self.store.bind(py).call_method0("close") {
                    tracing::debug!(target: "engram_mooncake", "close: {e}");
                }
            });
        }
    }
}

#[cfg(not(feature = "python"))]
mod imp {
    use super::{RangedGet, Replication};
    use crate::config::ClientConfig;
    use crate::error::{Error, Result};

    #[derive(Debug)]
    enum Never {}

    /// A connected client; this build has none (see [`Client::connect`]).
    #[derive(Debug)]
    pub struct Client {
        never: Never,
    }

    impl Client {
        /// Always [`Error::NotCompiled`]: the client needs the `python` feature.
        pub fn connect(config: &ClientConfig) -> Result<Self> {
            config.validate()?;
            Err(Error::NotCompiled { feature: "python" })
        }
        pub fn config(&self) -> &ClientConfig {
            match self.never {}
        }
        pub fn hostname(&self) -> Result<String> {
            match self.never {}
        }
        /// # Safety
        /// As the `python` build's.
        pub unsafe fn register(&self, _ptr: usize, _len: usize) -> Result<()> {
            match self.never {}
        }
        /// # Safety
        /// As the `python` build's.
        pub unsafe fn unregister(&self, _ptr: usize) -> Result<()> {
            match self.never {}
        }
        /// # Safety
        /// As the `python` build's.
        pub unsafe fn upsert_from(
            &self,
            _keys: &[String],
            _ptrs: &[usize],
            _sizes: &[usize],
            _r: &Replication,
        ) -> Result<Vec<i64>> {
            match self.never {}
        }
        pub fn upsert_bytes(&self, _key: &str, _bytes: &[u8], _r: &Replication) -> Result<i64> {
            match self.never {}
        }
        pub fn exist(&self, _keys: &[String]) -> Result<Vec<i64>> {
            match self.never {}
        }
        pub fn get_bytes(&self, _key: &str, _limit: u64) -> Result<Option<Vec<u8>>> {
            match self.never {}
        }
        /// # Safety
        /// As the `python` build's.
        pub unsafe fn get_ranges(&self, _base: usize, _g: &RangedGet) -> Result<Vec<Vec<i64>>> {
            match self.never {}
        }
        pub fn remove_prefix(&self, _prefix: &str) -> Result<i64> {
            match self.never {}
        }
        pub fn remove(&self, _key: &str) -> Result<i64> {
            match self.never {}
        }
    }
}

pub use imp::Client;

/// Connects a client ([`Client::connect`]).
pub fn connect(config: &ClientConfig) -> Result<Client> {
    Client::connect(config)
}
