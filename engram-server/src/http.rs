//! `GET /metrics` over plain HTTP/1.1 (Prometheus scrapes), one request per connection,
//! served on one thread with std's `TcpListener`: no async runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Shared;
use engram_client::error::{Result, io};

/// Largest request head read.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// How long a scraper has to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// The metrics endpoint's thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `GET /metrics` from a thread of its own.
    pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> Result<Self> {
        let here = Path::new("metrics address");
        let listener = TcpListener::bind(addr).map_err(|e| io("bind", here, e))?;
        let addr = listener.local_addr().map_err(|e| io("bind", here, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("listen", here, e))?;
        let thread = std::thread::Builder::new()
            .name("engram-metrics".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => answer(&shared, s),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(POLL)
                        }
                        Err(_) => std::thread::sleep(POLL),
                    }
                }
            })
            .map_err(|e| io("spawn", here, e))?;
        tracing::info!(target: "engram_service", %addr, "metrics at http://{addr}/metrics");
        Ok(Self {
            addr,
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the thread (the caller has set the stop flag).
    pub fn stop(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(shared: &Shared, mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if target == "/metrics" || target.starts_with("/metrics?") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            shared.stats().prometheus(),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.flush();
}
