//! A table published to a Mooncake cluster reads back byte-identical to the local table,
//! through the store's driver, on every id pattern, with and without the cache, from the
//! full table and from a skeleton; missing and corrupted objects are typed errors, never
//! wrong rows; two clients read at once; unpublishing makes it unreadable, and opening
//! then falls back to the local table with the reason. Needs a cluster
//! (`scripts/mooncake-local.sh start`; skipped without one unless ENGRAM_REQUIRE_MOONCAKE=1).

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::*;
use engram_mooncake::{
    Error, MooncakeFactory, PublishOptions, fetch_skeleton, mooncake_store, open_store, publish,
    unpublish,
};
use engram_store::BackendKind;

fn check_all_patterns(st: &engram_store::Store, mem: &engram_store::Store, seed: u64) {
    let rb = st.row_bytes();
    for layer in 0..st.table().n_layers() {
        let rows = st.table().rows(layer).expect("rows");
        for ids in id_patterns(rows, seed + layer as u64) {
            let mut want = vec![0u8; ids.len() * rb];
            mem.lookup_into(layer, &ids, &mut want).expect("memory");
            let mut got = vec![0u8; ids.len() * rb];
            st.lookup_into(layer, &ids, &mut got)
                .expect("mooncake lookup");
            assert_eq!(got, want, "layer {layer}, {} ids", ids.len());
            let (buf, r) = st
                .prefetch(layer, &ids, st.alloc_rows(ids.len()).expect("buf"))
                .wait();
            r.expect("mooncake prefetch");
            assert_eq!(&buf[..], &want[..], "prefetch, layer {layer}");
        }
    }
}

#[test]
fn published_tables_read_back_byte_identical() {
    let Some(cfg) = cluster("published_tables_read_back_byte_identical") else {
        return;
    };
    let Fixture {
        tmp,
        dir,
        table,
        client,
        keys,
        ..
    } = fixture(&cfg, 101);
    let opts = PublishOptions {
        name: Some("cluster-test-a".into()),
        ..small_chunks()
    };
    let mut last = None;
    let report = publish(&client, &table, &opts, &mut |p| last = Some(p)).expect("publish");
    assert_eq!(report.prefix, keys.prefix);
    assert!(
        report.uploaded_chunks > 2 && report.resumed_chunks == 0,
        "{report:?}"
    );
    assert_eq!(report.verified_bytes, report.bytes);
    assert_eq!(last.map(|p| p.done_bytes), Some(report.bytes));
    // A second run resumes: every chunk is there already, and verifies again.
    let again = publish(&client, &table, &opts, &mut |_| {}).expect("publish again");
    assert_eq!(
        (again.uploaded_chunks, again.resumed_chunks),
        (0, report.chunks)
    );
    assert_eq!(
        engram_mooncake::resolve(&client, "cluster-test-a").expect("name"),
        keys
    );

    let mem = memory_store(&dir);
    for cache in [0, 64 << 10] {
        let st = mooncake_store(Arc::clone(&client), Arc::clone(&table), &options(cache))
            .expect("store over mooncake");
        assert_eq!(st.backend_kind(), BackendKind::External("mooncake"));
        check_all_patterns(&st, &mem, 7 + cache);
        let stats = st.stats();
        assert!(stats.device_reads > 0, "rows came through the engine");
        assert_eq!(stats.errors, 0);
    }

    // A host with only the skeleton reads the same bytes.
    let skel = tmp.path().join("skeleton");
    let sk = fetch_skeleton(&client, &keys, &skel).expect("skeleton");
    assert!(engram_mooncake::is_skeleton(&skel));
    let layer_file = skel.join(&sk.manifest().layers[0].file);
    let meta = std::fs::metadata(&layer_file).expect("layer file");
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() * 512 < meta.len(), "the row region is a hole");
    let opened = open_store(&skel, &options(0), &cfg).expect("open the skeleton");
    assert!(opened.fallback.is_none());
    check_all_patterns(&opened.store, &mem, 3);
    drop(opened);

    // Unpublished: the factory refuses; the full table falls back, the skeleton cannot.
    assert!(unpublish(&client, &keys, Some("cluster-test-a")).expect("unpublish") > 0);
    let e = MooncakeFactory::new(Arc::clone(&client), &table).expect_err("unpublished");
    assert!(matches!(e, Error::NotPublished { .. }), "{e}");
    let opened = open_store(&dir, &options(0), &cfg).expect("falls back");
    let why = opened.fallback.expect("a fallback reason");
    assert!(
        why.contains("not published") && why.contains("local table"),
        "{why}"
    );
    assert_ne!(
        opened.store.backend_kind(),
        BackendKind::External("mooncake")
    );
    check_all_patterns(&opened.store, &mem, 5);
    let e = open_store(&skel, &options(0), &cfg).expect_err("a skeleton has no local rows");
    assert!(matches!(e, Error::NotPublished { .. }), "{e}");
}

#[test]
fn missing_and_corrupted_objects_are_errors_never_wrong_rows() {
    let Some(cfg) = cluster("missing_and_corrupted_objects_are_errors_never_wrong_rows") else {
        return;
    };
    let Fixture {
        spec: s,
        table,
        client,
        keys,
        ..
    } = fixture(&cfg, 202);
    let opts = small_chunks();
    publish(&client, &table, &opts, &mut |_| {}).expect("publish");
    let st = mooncake_store(Arc::clone(&client), Arc::clone(&table), &options(0)).expect("store");
    let rb = st.row_bytes();
    let m = table.manifest();
    let rows_per_chunk = opts.chunk_bytes / m.row_bytes;
    // A row in chunk 2 of layer 0 (chunk 0 holds the header), and one far from it.
    let row_in = |chunk: u64| (chunk * opts.chunk_bytes - m.data_offset) / m.row_bytes + 3;
    let victim = row_in(2);
    let other = row_in(2) + 3 * rows_per_chunk;
    let want = expected_rows(&s, 0, &[victim, other], rb);
    let mut out = vec![0u8; 2 * rb];
    st.lookup_into(0, &[victim, other], &mut out)
        .expect("intact");
    assert_eq!(out, want);

    // Missing: a typed I/O error naming the layer file, the offset and the key.
    let key = keys.chunk(0, 2);
    assert_eq!(client.remove(&key).expect("remove"), 0);
    let e = st
        .lookup_into(0, &[victim], &mut out[..rb])
        .expect_err("a missing chunk");
    match &e {
        engram_store::Error::IoAt { path, error, .. } => {
            assert!(path.ends_with(&m.layers[0].file), "{e}");
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains(&key), "{e}");
        }
        other => unreachable!("expected an I/O error, got {other}"),
    }
    let mut one = vec![0u8; rb];
    st.lookup_into(0, &[other], &mut one)
        .expect("other chunks still read");
    assert_eq!(one, want[rb..]);

    // Corrupted: one flipped byte in the row region is a checksum error.
    let lf = table.layer(0).expect("layer");
    let mut bytes = vec![0u8; opts.chunk_bytes as usize];
    lf.file
        .read_exact_at(&mut bytes, 2 * opts.chunk_bytes)
        .expect("read chunk");
    bytes[100] ^= 0x01;
    let code = client
        .upsert_bytes(&key, &bytes, &opts.replication)
        .expect("upsert");
    assert_eq!(code, 0);
    let e = st
        .lookup_into(0, &[victim], &mut out[..rb])
        .expect_err("a corrupted chunk");
    assert!(matches!(e, engram_store::Error::Checksum { .. }), "{e}");
    drop(st);
    unpublish(&client, &keys, None).expect("unpublish");
}

#[test]
fn two_clients_read_at_once() {
    let Some(cfg) = cluster("two_clients_read_at_once") else {
        return;
    };
    let Fixture {
        spec: s,
        table,
        client: publisher,
        keys,
        ..
    } = fixture(&cfg, 303);
    publish(&publisher, &table, &PublishOptions::default(), &mut |_| {}).expect("publish");
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let cfg = cfg.clone();
            let table = Arc::clone(&table);
            let s = s.clone();
            std::thread::spawn(move || {
                let client = connect(&cfg);
                let st = mooncake_store(client, table, &options(0)).expect("store");
                let rb = st.row_bytes();
                for round in 0..20u64 {
                    let layer = (round % 2) as usize;
                    let rows = st.table().rows(layer).expect("rows");
                    let ids: Vec<u64> = (0..256)
                        .map(|k| (k * 7919 + round * 31 + t * 1_000_003) % rows)
                        .collect();
                    let mut got = vec![0u8; ids.len() * rb];
                    st.lookup_into(layer, &ids, &mut got).expect("lookup");
                    assert_eq!(got, expected_rows(&s, layer, &ids, rb), "client {t}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a reader thread");
    }
    unpublish(&publisher, &keys, None).expect("unpublish");
}
