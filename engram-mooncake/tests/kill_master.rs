//! Killing the master while batches are being read: every batch either returns the right
//! rows or a typed error, the failure surfaces within the configured timeout, and nothing
//! hangs. Runs its own master and storage node (from the venv that
//! `scripts/mooncake-local.sh` makes) so the shared cluster stays up.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use engram_mooncake::{ClientConfig, TableKeys, mooncake_store, publish};
use engram_store::Table;

/// Children killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_listening(port: u16, child: &mut Child, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "{what} exited before listening"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!("{what} did not listen on {port} within 20 s");
}

fn binary(venv: &Path, name: &str) -> PathBuf {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .expect("venv lib")
        .flatten()
        .map(|e| e.path().join("site-packages/mooncake").join(name))
        .find(|p| p.exists())
        .expect("the mooncake wheel's binaries")
}

#[test]
fn killing_the_master_mid_batch_is_an_error_not_a_hang() {
    let Some(shared) = cluster("killing_the_master_mid_batch_is_an_error_not_a_hang") else {
        return;
    };
    let venv = shared.venv.clone().expect("venv");
    let (rpc, metrics, node) = (free_port(), free_port(), free_port());
    let logs = tempfile::tempdir().expect("tmp");
    let log = |n: &str| Stdio::from(std::fs::File::create(logs.path().join(n)).expect("log file"));
    let mut procs = Procs(Vec::new());
    let mut master = Command::new(binary(&venv, "mooncake_master"))
        .args([
            "--rpc_address=127.0.0.1",
            &format!("--rpc_port={rpc}"),
            "--metrics_host=127.0.0.1",
            &format!("--metrics_port={metrics}"),
            "--enable_http_metadata_server=false",
        ])
        .stdout(log("master.log"))
        .stderr(log("master.err"))
        .spawn()
        .expect("start the master");
    wait_listening(rpc, &mut master, "master");
    procs.0.push(master);
    let mut holder = Command::new(binary(&venv, "mooncake_client"))
        .args([
            "--host=127.0.0.1",
            &format!("--port={node}"),
            "--global_segment_size=64 MB",
            &format!("--master_server_address=127.0.0.1:{rpc}"),
            "--metadata_server=P2PHANDSHAKE",
            "--protocol=tcp",
        ])
        .env("MC_TCP_BIND_ADDRESS", "127.0.0.1")
        .stdout(log("node.log"))
        .stderr(log("node.err"))
        .spawn()
        .expect("start the storage node");
    wait_listening(node, &mut holder, "storage node");
    procs.0.push(holder);

    let mut cfg = ClientConfig::new(&format!("127.0.0.1:{rpc}")).expect("config");
    cfg.venv = Some(venv);
    cfg.timeout = Duration::from_secs(3);
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(404);
    let dir = make_table(tmp.path(), "t", &s);
    let table = Arc::new(Table::open(&dir).expect("table"));
    let client = connect(&cfg);
    publish(&client, &table, &small_chunks(), &mut |_| {}).expect("publish");
    assert!(TableKeys::of(table.manifest()).is_ok());

    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let reader = {
        let client = Arc::clone(&client);
        let table = Arc::clone(&table);
        let s = s.clone();
        std::thread::spawn(move || {
            let st = mooncake_store(client, table, &options(0)).expect("store");
            let rb = st.row_bytes();
            let rows = st.table().rows(0).expect("rows");
            let (mut ok_after, mut first_error) = (0u32, None);
            for round in 0..2000u64 {
                let ids: Vec<u64> = (0..256).map(|k| (k * 7919 + round * 131) % rows).collect();
                let mut got = vec![0u8; ids.len() * rb];
                match st.lookup_into(0, &ids, &mut got) {
                    Ok(()) => {
                        assert_eq!(got, expected_rows(&s, 0, &ids, rb), "a wrong row");
                        if round == 4 {
                            let _ = started_tx.send(());
                        }
                        if round > 4 {
                            ok_after += 1;
                        }
                    }
                    Err(e) => {
                        first_error = Some(e.to_string());
                        break;
                    }
                }
            }
            let _ = done_tx.send((ok_after, first_error));
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the first batches were read");
    let master = &mut procs.0[0];
    master.kill().expect("kill the master");
    let _ = master.wait();
    let (ok_after, error) = done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the reader finished: no hang");
    reader.join().expect("reader thread");
    let error = error.unwrap_or_else(|| {
        unreachable!("{ok_after} batches read after the master was killed, and no error")
    });
    eprintln!("after the kill: {ok_after} batches, then: {error}");
    assert!(error.contains("Mooncake"), "a clear error: {error}");
}
