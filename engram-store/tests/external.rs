//! An engine from outside the crate (`BackendOptions::engine`): the store reads through
//! the one driver over it, reports the factory's backend name and the remote tier, returns
//! the memory backend's bytes, and still verifies every block (a lying engine is a
//! checksum error, never a wrong row).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::file_engine::FileFactory;
use common::*;
use engram_store::{BackendKind, BackendOptions, Error, RowLayout, Store, StoreOptions};

fn open(dir: &std::path::Path, factory: Arc<FileFactory>, cache_bytes: u64) -> Store {
    Store::open(
        dir,
        &StoreOptions {
            backend: BackendOptions {
                // The factory wins over a built-in kind.
                kind: Some(BackendKind::Pread),
                engine: Some(factory),
                queue_depth: 8,
                ..BackendOptions::default()
            },
            io_workers: 1,
            max_in_flight: 4,
            cache_bytes,
            ..StoreOptions::default()
        },
    )
    .expect("open with an external engine")
}

#[test]
fn an_external_engine_returns_the_memory_backends_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 11);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let factory = Arc::new(FileFactory::default());
    let st = open(&dir, Arc::clone(&factory), 0);
    assert_eq!(st.backend_kind(), BackendKind::External("test-files"));
    assert_eq!(st.backend_kind().name(), "test-files");
    assert!(factory.staging_bytes.load(Ordering::Relaxed) >= 8 * 4096);
    let mem = store(&dir, BackendKind::Memory, 0, 4);
    let rb = st.row_bytes();
    for layer in 0..st.table().n_layers() {
        let rows = st.table().rows(layer).expect("rows");
        let ids: Vec<u64> = (0..97)
            .map(|k| (k * 7919 + 3) % rows)
            .chain([0, rows - 1, 5, 5])
            .collect();
        let mut got = vec![0u8; ids.len() * rb];
        st.lookup_into(layer, &ids, &mut got).expect("lookup");
        let mut want = vec![0u8; ids.len() * rb];
        mem.lookup_into(layer, &ids, &mut want)
            .expect("memory lookup");
        assert_eq!(got, want, "layer {layer}");
        assert_eq!(got, expected_rows(&s, layer, &ids, rb));
        let t = st.prefetch(layer, &ids, st.alloc_rows(ids.len()).expect("buf"));
        let (rows_buf, r) = t.wait();
        r.expect("prefetch");
        assert_eq!(&rows_buf[..], &want[..]);
    }
    assert!(
        factory.reads.load(Ordering::Relaxed) > 0,
        "the engine did the reads"
    );
    let stats = st.stats();
    assert_eq!(stats.backend, "test-files");
    let remote = stats
        .tiers
        .iter()
        .find(|t| t.name == "remote")
        .expect("remote tier");
    assert!(remote.count > 0, "reads are accounted to the remote tier");
}

/// The driver keeps at most the queue depth in the engine, and refills it into spare
/// staging slots while the reads it reaped still hold theirs (before verifying them).
#[test]
fn the_queue_depth_bounds_reads_in_flight_and_refills_before_verification() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 3000, 11);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let factory = Arc::new(FileFactory::default());
    let st = open(&dir, Arc::clone(&factory), 0);
    let rows = st.table().rows(0).expect("rows");
    let ids: Vec<u64> = (0..400).map(|k| (k * 7919 + 3) % rows).collect();
    let mut got = vec![0u8; ids.len() * st.row_bytes()];
    st.lookup_into(0, &ids, &mut got).expect("lookup");
    assert_eq!(got, expected_rows(&s, 0, &ids, st.row_bytes()));
    let reads = factory.reads.load(Ordering::Relaxed);
    assert!(reads > 16, "the lookup needs many reads: {reads}");
    // queue_depth 8 in `open`: every reap hands back 8 reads, and 8 more go out at once.
    assert_eq!(factory.max_in_flight.load(Ordering::Relaxed), 8);
    assert_eq!(factory.staging_slots.load(Ordering::Relaxed), 16);
    let max_slot = factory.max_slot.load(Ordering::Relaxed);
    assert!(
        max_slot >= 8,
        "reads went only to slots 0..={max_slot}: the queue was refilled after verification"
    );
}

#[test]
fn a_corrupting_external_engine_is_a_checksum_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 12);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let factory = Arc::new(FileFactory {
        corrupt_read: Some(0),
        ..FileFactory::default()
    });
    let st = open(&dir, factory, 0);
    let mut out = vec![0u8; 3 * st.row_bytes()];
    let e = st
        .lookup_into(0, &[1, 2, 3], &mut out)
        .expect_err("corrupted read");
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
}
