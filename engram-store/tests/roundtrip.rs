//! Every backend returns the memory tier's bytes (= the synthetic generator's bytes) for
//! the same ids, over random ids, layouts and batch shapes.

mod common;

use common::*;
use engram_store::{BackendKind, RowLayout, Table};
use proptest::prelude::*;

#[test]
fn writer_reader_roundtrip_all_layouts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let layouts = [
        (RowLayout::Bf16, 64),
        (RowLayout::F16, 80),
        (RowLayout::F32, 40),
        (RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256),
        (RowLayout::F32, 1300), // rows larger than a page
    ];
    for (i, (layout, dim)) in layouts.into_iter().enumerate() {
        let s = spec(layout, dim, 30 + i as u64, i as u64);
        let (dir, m) = make_table(tmp.path(), &format!("t{i}"), &s);
        let t = Table::open(&dir).expect("open");
        assert_eq!(t.manifest(), &m);
        for li in 0..t.n_layers() {
            t.verify_layer(li).expect("verify");
            let rows = t.rows(li).expect("rows");
            let ids: Vec<u64> = (0..rows).collect();
            let mut out = vec![0u8; ids.len() * t.row_bytes()];
            t.read_rows_simple(li, &ids, &mut out).expect("read");
            assert_eq!(out, expected_rows(&s, li, &ids, t.row_bytes()));
        }
    }
}

#[test]
fn every_backend_reads_every_row() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256, 200, 9);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in ALL_BACKENDS {
        let Some(st) = try_store(&dir, kind, 0, 8) else {
            continue;
        };
        let rb = st.row_bytes();
        for li in 0..2 {
            let rows = st.table().rows(li).expect("rows");
            let ids: Vec<u64> = (0..rows).rev().collect();
            let mut out = vec![0u8; ids.len() * rb];
            st.lookup_into(li, &ids, &mut out).expect("lookup");
            assert!(out == expected_rows(&s, li, &ids, rb), "{kind} layer {li}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn backends_identical(
        layout_i in 0usize..4,
        base in 20u64..400,
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<u64>(), 1..300),
        qd in 1usize..16,
        cache_rows in 0u64..64,
        coalesce in 0u64..3,
    ) {
        let (layout, dim) = [
            (RowLayout::Bf16, 64),
            (RowLayout::F16, 80),
            (RowLayout::F32, 24),
            (RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256),
        ][layout_i];
        let tmp = tempfile::tempdir().expect("tmp");
        let s = spec(layout, dim, base, seed);
        let (dir, m) = make_table(tmp.path(), "t", &s);
        let rb = m.row_bytes as usize;
        let mut reference: Option<Vec<Vec<u8>>> = None;
        for kind in ALL_BACKENDS {
            if skip_uring(kind) {
                continue;
            }
            let mut opts = engram_store::StoreOptions {
                backend: engram_store::BackendOptions {
                    kind: Some(kind),
                    queue_depth: qd,
                    pread_threads: 2,
                    coalesce_gap_bytes: coalesce * 4096,
                    max_read_bytes: 4096 * (1 + coalesce),
                    ..Default::default()
                },
                io_workers: 1,
                max_in_flight: 2,
                cache_bytes: cache_rows * 16 * rb as u64,
                admit_on_first_miss: cache_rows % 2 == 0,
                ..Default::default()
            };
            opts.max_batch_rows = 512;
            let st = engram_store::Store::open(&dir, &opts).expect("open");
            let mut got = Vec::new();
            for li in 0..2 {
                let rows = st.table().rows(li).expect("rows");
                // Duplicates on purpose: small moduli repeat ids.
                let ids: Vec<u64> = picks.iter().map(|p| p % rows.min(1 + p % 97 + rows / 2)).collect();
                let mut out = vec![0u8; ids.len() * rb];
                st.lookup_into(li, &ids, &mut out).expect("lookup");
                prop_assert!(out == expected_rows(&s, li, &ids, rb), "{} layer {}", kind, li);
                // The same batch again (cache hits) and through a ticket.
                let (buf, r) = st.prefetch(li, &ids, st.alloc_rows(ids.len()).expect("buf")).wait();
                r.expect("prefetch");
                prop_assert!(buf[..] == out[..]);
                got.push(out);
            }
            match &reference {
                None => reference = Some(got),
                Some(r) => prop_assert!(r == &got),
            }
        }
    }
}

#[test]
fn prefetch_many_tickets_back_pressure() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 1);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in [BackendKind::Uring, BackendKind::Pread] {
        let Some(st) = try_store(&dir, kind, 64 << 10, 4) else {
            continue;
        };
        let rb = st.row_bytes();
        let rows = st.table().rows(0).expect("rows");
        let mut tickets = Vec::new();
        let mut expect = Vec::new();
        // More tickets than max_in_flight (4): the producer thread blocks, then resumes.
        let st2 = st.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            for b in 0..20u64 {
                let ids: Vec<u64> = (0..50).map(|k| (b * 131 + k * 17) % rows).collect();
                let t = st2.prefetch(1, &ids, st2.alloc_rows(ids.len()).expect("buf"));
                out.push((ids, t.wait()));
            }
            out
        });
        for b in 0..20u64 {
            let ids: Vec<u64> = (0..33).map(|k| (b * 7 + k * 3) % rows).collect();
            expect.push(expected_rows(&s, 0, &ids, rb));
            tickets.push(st.prefetch(0, &ids, st.alloc_rows(ids.len()).expect("buf")));
            if tickets.len() == 3 {
                let t = tickets.remove(0);
                let (buf, r) = t.wait();
                r.expect("ok");
                assert_eq!(&buf[..], &expect.remove(0)[..]);
            }
        }
        for t in tickets {
            let (buf, r) = t.wait();
            r.expect("ok");
            assert_eq!(&buf[..], &expect.remove(0)[..]);
        }
        for (ids, (buf, r)) in handle.join().expect("thread") {
            r.expect("ok");
            assert_eq!(&buf[..], &expected_rows(&s, 1, &ids, rb)[..]);
        }
        let stats = st.stats();
        assert!(stats.batches >= 40);
        assert!(
            stats
                .prometheus()
                .contains("engram_store_rows_requested_total")
        );
    }
}

#[test]
fn bad_requests_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 30, 1);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let st = store(&dir, BackendKind::Pread, 0, 4);
    let rows = st.table().rows(0).expect("rows");
    let mut out = vec![0u8; 2 * st.row_bytes()];
    let e = st
        .lookup_into(0, &[1, rows], &mut out)
        .expect_err("out of range");
    assert!(
        matches!(e, engram_store::Error::RowOutOfRange { index: 1, .. }),
        "{e}"
    );
    assert!(st.lookup_into(2, &[1, 2], &mut out).is_err());
    assert!(st.lookup_into(0, &[1], &mut out).is_err());
    let (_, r) = st
        .prefetch(0, &[rows + 5], st.alloc_rows(1).expect("buf"))
        .wait();
    assert!(r.is_err());
}

#[test]
fn profile_seeds_the_cache() {
    // Seeding reads the profile's rows in file order through coalesced reads (device
    // backends open a second, bulk reader); the rows must be the same bytes either way.
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        if !common::skip_uring(kind) {
            profile_seeds_the_cache_on(kind);
        }
    }
}

fn profile_seeds_the_cache_on(kind: BackendKind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 200, 4);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let hot: Vec<u64> = (0..64).map(|k| k * 13).collect();
    let profile = engram_store::Profile {
        table_id: 0,
        layers: vec![engram_store::LayerProfile::from_counts(
            m.layers[1].layer_id,
            hot.iter().enumerate().map(|(i, &r)| (r, 1000 - i as u64)),
            64,
        )],
    };
    let ppath = tmp.path().join("profile.bin");
    profile.write(&ppath, false).expect("write");
    let profile = engram_store::Profile::read(&ppath).expect("read");
    let st = engram_store::Store::open(
        &dir,
        &engram_store::StoreOptions {
            backend: engram_store::BackendOptions {
                kind: Some(kind),
                ..Default::default()
            },
            io_workers: 1,
            cache_bytes: 128 * 16 * 16,
            profile: Some(profile),
            ..Default::default()
        },
    )
    .expect("open");
    let rb = st.row_bytes();
    let mut out = vec![0u8; hot.len() * rb];
    st.lookup_into(1, &hot, &mut out).expect("lookup");
    assert_eq!(out, expected_rows(&s, 1, &hot, rb));
    let stats = st.stats();
    // 16 shards x 16 slots; every seeded row that fit its shard is a hit, none read again.
    assert!(stats.cache_hits > 0, "{stats:?}");
    assert_eq!(stats.cache_hits + stats.rows_backend, hot.len() as u64);
    let prom = st.prometheus();
    for name in [
        "engram_store_cache_hits_total",
        "engram_store_device_reads_total",
        "engram_store_read_amplification",
        "engram_store_tier_latency_seconds",
        "engram_store_stage_latency_seconds",
    ] {
        assert!(prom.contains(name), "missing {name}");
    }
}

#[test]
fn dram_served_prefetches_complete_inline_with_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 100, 3);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let ids: Vec<u64> = vec![5, 17, 5, 99, 3];
    // Resident backend: always inline. SSD backend: inline once every row is cached, a
    // worker otherwise; the bytes are the same either way.
    for (kind, cache) in [(BackendKind::Memory, 0), (BackendKind::Pread, 1 << 20)] {
        let Some(st) = try_store(&dir, kind, cache, 8) else {
            continue;
        };
        let rb = st.row_bytes();
        let want = expected_rows(&s, 0, &ids, rb);
        for round in 0..2 {
            let t = st.prefetch(0, &ids, st.alloc_rows(ids.len()).expect("buffer"));
            let inline = kind == BackendKind::Memory || round == 1;
            if inline {
                assert!(t.is_ready(), "{kind} round {round}: should complete inline");
            }
            let (buf, r) = t.wait();
            r.expect("read");
            assert_eq!(&buf[..], &want[..], "{kind} round {round}");
        }
    }
}

/// Speculative prefetch fills the cache, so the rows are later served from DRAM; a
/// cancelled speculation and one on a resident backend are harmless no-ops or partial.
#[test]
fn speculation_warms_the_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 4);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        let Some(st) = try_store(&dir, kind, 1 << 20, 8) else {
            continue;
        };
        let rb = st.row_bytes();
        let ids: Vec<u64> = (0..64).map(|k| k * 7 + 1).collect();
        let sp = st.speculate(1, &ids).expect("valid ids");
        assert!(sp.accepted(), "{kind}");
        // Wait until the worker has read them (a later demand batch would too).
        let t0 = std::time::Instant::now();
        while st.stats().spec_batches == 0 && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let stats = st.stats();
        assert_eq!(stats.spec_batches, 1, "{kind}");
        assert_eq!(stats.spec_rows_read, 64, "{kind}");
        st.reset_stats();
        let mut out = vec![0u8; ids.len() * rb];
        st.lookup_into(1, &ids, &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 1, &ids, rb));
        let stats = st.stats();
        assert_eq!((stats.cache_hits, stats.device_reads), (64, 0), "{kind}");
        // Out-of-range ids are an error at once.
        assert!(st.speculate(1, &[u64::MAX]).is_err());
        // A cancelled speculation never fails a later demand read.
        let more: Vec<u64> = (0..200).map(|k| k * 5 + 3).collect();
        st.speculate(0, &more).expect("valid").cancel();
        let mut out = vec![0u8; more.len() * rb];
        st.lookup_into(0, &more, &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 0, &more, rb));
    }
    let st = store(&dir, BackendKind::Memory, 1 << 20, 8);
    assert!(!st.speculate(0, &[1, 2]).expect("valid").accepted());
}
