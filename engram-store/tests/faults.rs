//! Injected read faults (EIO, short reads, flipped bytes, delayed and reordered
//! completions) on both device engines: every fault surfaces as a typed error that names
//! the layer file and a byte offset, and no fault ever yields a wrong row.

mod common;

use common::*;
use engram_store::{
    BackendKind, BackendOptions, Error, Fault, FaultPlan, RowLayout, Store, StoreOptions,
};

fn open_hedged(
    dir: &std::path::Path,
    kind: BackendKind,
    verify: bool,
    read_unit: u64,
    qd: usize,
    faults: FaultPlan,
    hedge_after_us: u64,
) -> Store {
    open_workers(dir, kind, verify, read_unit, qd, faults, hedge_after_us, 2)
}

#[allow(clippy::too_many_arguments)]
fn open_workers(
    dir: &std::path::Path,
    kind: BackendKind,
    verify: bool,
    read_unit: u64,
    qd: usize,
    faults: FaultPlan,
    hedge_after_us: u64,
    io_workers: usize,
) -> Store {
    Store::open(
        dir,
        &StoreOptions {
            backend: BackendOptions {
                kind: Some(kind),
                verify,
                read_unit,
                queue_depth: qd,
                coalesce_gap_bytes: 4096,
                max_read_bytes: 16 << 10,
                pread_threads: 2,
                faults: Some(faults),
                hedge_after_us,
                ..Default::default()
            },
            io_workers,
            max_in_flight: 4,
            ..Default::default()
        },
    )
    .expect("open")
}

/// The error names a layer file of the table and an offset inside it.
#[allow(clippy::panic)]
fn assert_located(e: &Error, dir: &std::path::Path) {
    let (path, offset) = match e {
        Error::IoAt { path, offset, .. } => (path, *offset),
        Error::Checksum { path, offset, .. } => (path, *offset),
        other => panic!("untyped or unlocated fault error: {other:?}"),
    };
    assert!(path.starts_with(dir), "{path:?} is not in {dir:?}");
    assert!(offset >= 4096, "offset {offset} is in the header");
}

#[test]
fn no_fault_ever_yields_a_wrong_row() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256, 150, 4);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let mut rng = engram_kernels::rng::SplitMix64(99);
    let (mut ok, mut failed) = (0u32, 0u32);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        if skip_uring(kind) {
            continue;
        }
        for seed in 0..12u64 {
            let verify = seed % 3 != 0;
            let plan = FaultPlan {
                seed,
                eio: 0.02 * (seed % 4) as f64,
                short: 0.04 * ((seed / 3) % 3) as f64,
                // Without verification a flipped byte is by definition undetectable.
                corrupt: if verify { 0.05 } else { 0.0 },
                delay: 0.3,
                reorder: seed % 2 == 0,
                at: Vec::new(),
            };
            let read_unit = if seed % 2 == 0 { 512 } else { 4096 };
            // A third of the runs hedge every read after 1 us: duplicate completions,
            // late copies of finished batches, all in the mix with the faults.
            let hedge = if seed % 3 == 1 { 1 } else { 0 };
            let st = open_hedged(
                &dir,
                kind,
                verify,
                read_unit,
                1 + seed as usize % 8,
                plan.clone(),
                hedge,
            );
            let rb = st.row_bytes();
            for round in 0..12 {
                let layer = round % 2;
                let rows = st.table().rows(layer).expect("rows");
                let n = 1 + rng.below(200) as usize;
                let ids: Vec<u64> = match round % 3 {
                    0 => {
                        let start = rng.below(rows);
                        (start..(start + n as u64).min(rows)).collect()
                    }
                    1 => (0..n).map(|_| rng.below(rows)).collect(),
                    _ => (0..n).map(|_| rng.below(rows.min(4))).collect(),
                };
                let want = expected_rows(&s, layer, &ids, rb);
                let result = if round % 2 == 0 {
                    let mut out = vec![0u8; ids.len() * rb];
                    st.lookup_into(layer, &ids, &mut out).map(|()| out)
                } else {
                    let (buf, r) = st
                        .prefetch(layer, &ids, st.alloc_rows(ids.len()).expect("buf"))
                        .wait();
                    r.map(|()| buf.to_vec())
                };
                match result {
                    Ok(out) => {
                        assert!(out == want, "{kind} {plan} round {round}: wrong rows");
                        ok += 1;
                    }
                    Err(e) => {
                        assert_located(&e, &dir);
                        failed += 1;
                    }
                }
            }
        }
    }
    eprintln!("faulty batches: {ok} returned correct rows, {failed} failed with a located error");
    assert!(ok > 0 && failed > 0, "the faults must both hit and miss");
}

#[test]
fn each_fault_kind_has_its_own_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 200, 8);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let layer_file = dir.join(&m.layers[0].file);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        if skip_uring(kind) {
            continue;
        }
        for (fault, needle) in [
            (Fault::Eio, "Input/output error"),
            (Fault::Short, "short read"),
            (Fault::Corrupt, "checksum mismatch"),
        ] {
            let plan = FaultPlan {
                at: vec![(0, fault)],
                ..FaultPlan::default()
            };
            // One reactor: the fault plan counts reads per reactor (per engine).
            let st = open_workers(&dir, kind, true, 4096, 4, plan, 0, 1);
            let ids = [3u64, 700, 150];
            let mut out = vec![0u8; ids.len() * 128];
            let e = st
                .lookup_into(0, &ids, &mut out)
                .expect_err("fault at read 0");
            let msg = e.to_string();
            assert!(msg.contains(needle), "{kind} {fault:?}: {msg}");
            assert!(msg.contains(&layer_file.display().to_string()), "{msg}");
            assert_located(&e, &dir);
            // The next batch on the same reactor is unaffected.
            st.lookup_into(0, &ids, &mut out).expect("after the fault");
            assert_eq!(out, expected_rows(&s, 0, &ids, 128));
        }
    }
}

/// Hedged reads: with the second copy issued after 1 us, every batch still returns its
/// rows, and the copies are counted.
#[test]
fn hedged_reads_return_the_same_rows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 5);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        if skip_uring(kind) {
            continue;
        }
        let plan = FaultPlan {
            seed: 3,
            delay: 0.5,
            reorder: true,
            ..FaultPlan::default()
        };
        let st = open_hedged(&dir, kind, true, 4096, 8, plan, 1);
        let rb = st.row_bytes();
        for round in 0..20u64 {
            let ids: Vec<u64> = (0..60).map(|k| (k * 37 + round * 11) % 1200).collect();
            let mut out = vec![0u8; ids.len() * rb];
            st.lookup_into((round % 2) as usize, &ids, &mut out)
                .expect("lookup");
            assert_eq!(
                out,
                expected_rows(&s, (round % 2) as usize, &ids, rb),
                "{kind}"
            );
        }
        assert!(st.stats().hedged_reads > 0, "{kind}: no read was hedged");
    }
}

/// The disk probe reads through the same staging and engine, for every block size the
/// read unit may take (512 B included).
#[test]
fn probe_reads_every_block_size() {
    if skip_uring(BackendKind::Uring) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 5);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let file = dir.join(&m.layers[0].file);
    let len = std::fs::metadata(&file).expect("stat").len() / 4096 * 4096;
    for block in [512u64, 4096, 65536] {
        let r = engram_testbed::probe::probe_random_reads(&file, 0, len, block, 4, 0.05, 1)
            .expect("probe");
        assert!(r.reads > 0 && r.block_bytes == block, "{r:?}");
    }
    assert!(engram_testbed::probe::probe_random_reads(&file, 0, len, 100, 4, 0.05, 1).is_err());
}
