//! How to reach a Mooncake cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Environment variable naming the virtual environment that holds the Mooncake wheel
/// (`scripts/mooncake-local.sh` makes `target/mooncake/venv`); its site-packages join the
/// embedded interpreter's path. Unset: [`default_venv`].
pub const VENV_ENV: &str = "ENGRAM_MOONCAKE_VENV";
/// Where `scripts/mooncake-local.sh` installs the wheel, relative to the repository root.
pub const LOCAL_VENV: &str = "target/mooncake/venv";

/// The venv `scripts/mooncake-local.sh` made: [`LOCAL_VENV`] under the current directory,
/// else under the repository this crate was built from; `None` where neither exists.
pub fn default_venv() -> Option<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [PathBuf::from(LOCAL_VENV), built_from.join(LOCAL_VENV)]
        .into_iter()
        .find(|p| p.join("pyvenv.cfg").is_file())
}
/// Environment variable with the metadata server (default `P2PHANDSHAKE`: none).
pub const METADATA_ENV: &str = "ENGRAM_MOONCAKE_METADATA";
/// Environment variable with this host's address as other Mooncake clients reach it.
pub const LOCAL_HOST_ENV: &str = "ENGRAM_MOONCAKE_LOCAL_HOST";
/// Environment variable with the transfer protocol (`tcp`, `rdma`).
pub const PROTOCOL_ENV: &str = "ENGRAM_MOONCAKE_PROTOCOL";
/// Default time one batch of gets may take before the engine gives up on the cluster.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the reachability probe of the master waits.
pub const CONNECT_PROBE: Duration = Duration::from_secs(2);
/// Largest segment one client may contribute.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 40;

/// A Mooncake client's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The master's RPC address, `HOST:PORT`.
    pub master: String,
    /// Metadata server: `P2PHANDSHAKE` (none), `http://HOST:PORT/metadata` or etcd.
    pub metadata: String,
    /// This host's address as other clients reach it.
    pub local_hostname: String,
    /// `tcp` or `rdma`.
    pub protocol: String,
    /// RDMA devices (empty: auto, or none for TCP).
    pub rdma_devices: String,
    /// Memory this client contributes to the cluster (0: a pure reader or publisher).
    pub segment_bytes: u64,
    /// The client's own transfer buffer.
    pub local_buffer_bytes: u64,
    /// Virtual environment with the Mooncake wheel (`None`: the interpreter's own path).
    pub venv: Option<PathBuf>,
    /// Longest a batch of gets may take before the reader reports the cluster broken.
    pub timeout: Duration,
}

impl ClientConfig {
    /// Settings for the master at `master` (`HOST:PORT`), the rest from the environment
    /// ([`VENV_ENV`], [`METADATA_ENV`], [`LOCAL_HOST_ENV`], [`PROTOCOL_ENV`]) or defaults.
    pub fn new(master: &str) -> Result<Self> {
        let (host, port) = master.rsplit_once(':').ok_or_else(|| Error::Invalid {
            what: "Mooncake master",
            reason: format!("{master:?}: expected HOST:PORT"),
        })?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(Error::Invalid {
                what: "Mooncake master",
                reason: format!("{master:?}: expected HOST:PORT with a port in 1..=65535"),
            });
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Self {
            master: master.to_string(),
            metadata: env(METADATA_ENV).unwrap_or_else(|| "P2PHANDSHAKE".into()),
            local_hostname: env(LOCAL_HOST_ENV).unwrap_or_else(|| "127.0.0.1".into()),
            protocol: env(PROTOCOL_ENV).unwrap_or_else(|| "tcp".into()),
            rdma_devices: String::new(),
            segment_bytes: 0,
            local_buffer_bytes: 16 << 20,
            venv: env(VENV_ENV).map(PathBuf::from).or_else(default_venv),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(Error::Limit {
                what: "segment bytes",
                name: "MAX_SEGMENT_BYTES",
                limit: MAX_SEGMENT_BYTES,
                found: self.segment_bytes,
            });
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(Error::Invalid {
                what: "Mooncake timeout",
                reason: format!("{:?}: expected 1 ms to {MAX_TIMEOUT:?}", self.timeout),
            });
        }
        Ok(())
    }

    /// Errors with the reason unless a TCP connection to the master opens within
    /// [`CONNECT_PROBE`] (the client library itself may wait much longer).
    pub fn probe(&self) -> Result<()> {
        use std::net::{TcpStream, ToSocketAddrs};
        let unavailable = |reason: String| Error::Unavailable {
            master: self.master.clone(),
            reason,
        };
        let addrs: Vec<_> = self
            .master
            .to_socket_addrs()
            .map_err(|e| unavailable(format!("cannot resolve it: {e}")))?
            .collect();
        let mut last = String::from("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_PROBE) {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(unavailable(format!("the master does not answer ({last})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses_are_checked() {
        assert!(ClientConfig::new("127.0.0.1:50051").is_ok());
        assert!(ClientConfig::new("[::1]:50051").is_ok());
        for bad in ["", "host", "host:", ":1", "h:0", "h:70000", "h:x"] {
            assert!(ClientConfig::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unreachable_master_is_unavailable() {
        // Port 1 on loopback: nothing listens there.
        let c = ClientConfig::new("127.0.0.1:1").expect("config");
        assert!(matches!(c.probe(), Err(Error::Unavailable { .. })));
    }
}
