//! N-gram records: rows that miss together and share a record are read from it in one
//! unit; the bytes are the same as without records, corruption is caught, and a records
//! file of another table or shape is refused.

mod common;

use common::*;
use engram_store::records::{RECORDS_FILE, RecordShape, RecordsWriter};
use engram_store::{BackendKind, BackendOptions, Error, RowLayout, Store, StoreOptions};
use engram_testbed::synth::{SynthSpec, synth_row};
use proptest::prelude::*;

/// Writes records of `k` rows: record j of layer l holds rows `firsts[j] + i * stride`.
fn write_records(dir: &std::path::Path, s: &SynthSpec, table_id: u64, rows_per_layer: &[Vec<u64>]) {
    let rb = engram_store::format::row_bytes(s.row_layout, s.dim).expect("row bytes") as u32;
    let shape = RecordShape::new(s.config.n_heads as u32, rb).expect("shape");
    let mut w = RecordsWriter::create(&dir.join(RECORDS_FILE), table_id, shape).expect("create");
    for (li, rows) in rows_per_layer.iter().enumerate() {
        w.add_layer(li as u32, rows, |row, out| {
            synth_row(s.seed, li, row, out);
            Ok(())
        })
        .expect("layer");
    }
    w.finish().expect("finish");
}

fn open(dir: &std::path::Path, kind: BackendKind, records: bool) -> Store {
    Store::open(
        dir,
        &StoreOptions {
            backend: BackendOptions {
                kind: Some(kind),
                queue_depth: 8,
                pread_threads: 2,
                // One page per read, so reads count pages touched.
                max_read_bytes: 4096,
                ..Default::default()
            },
            io_workers: 1,
            records,
            ..Default::default()
        },
    )
    .expect("open")
}

fn table_id(dir: &std::path::Path) -> u64 {
    engram_store::Table::open(dir)
        .expect("table")
        .manifest()
        .table_id_u64()
        .expect("id")
}

#[test]
fn records_serve_rows_that_miss_together_with_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256, 400, 11);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    // Records pair row r with row r + 333 (two heads), for r = 0, 5, 10, ...
    let k = s.config.n_heads as u64;
    assert_eq!(k, 2);
    let recs: Vec<Vec<u64>> = m
        .layers
        .iter()
        .map(|l| {
            (0..l.rows / 2)
                .step_by(5)
                .flat_map(|r| [r, r + 333])
                .collect()
        })
        .collect();
    write_records(&dir, &s, table_id(&dir), &recs);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        if skip_uring(kind) {
            continue;
        }
        let with = open(&dir, kind, true);
        let without = open(&dir, kind, false);
        let rb = with.row_bytes();
        // Both rows of 40 records, plus 30 rows with no record partner in the batch.
        let mut ids: Vec<u64> = (0..40u64).flat_map(|j| [j * 5, j * 5 + 333]).collect();
        ids.extend((0..30u64).map(|j| 1 + j * 7));
        let want = expected_rows(&s, 1, &ids, rb);
        let mut a = vec![0u8; ids.len() * rb];
        with.lookup_into(1, &ids, &mut a).expect("with records");
        let mut b = vec![0u8; ids.len() * rb];
        without
            .lookup_into(1, &ids, &mut b)
            .expect("without records");
        assert!(a == want && b == want, "{kind}: bytes differ");
        let (sw, so) = (with.stats(), without.stats());
        assert_eq!(
            sw.record_rows, 80,
            "{kind}: every paired row from its record"
        );
        assert!(
            sw.record_reads > 0 && sw.record_reads <= 40,
            "{kind}: {}",
            sw.record_reads
        );
        assert!(
            sw.device_reads < so.device_reads,
            "{kind}: {} vs {}",
            sw.device_reads,
            so.device_reads
        );
        // Through prefetch tickets too.
        let (buf, r) = with
            .prefetch(1, &ids, with.alloc_rows(ids.len()).expect("buf"))
            .wait();
        r.expect("prefetch");
        assert!(buf[..] == want[..], "{kind}: prefetch bytes differ");
    }
}

#[test]
fn corrupted_or_foreign_records_are_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 3);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let recs: Vec<Vec<u64>> = m.layers.iter().map(|_| vec![1, 2, 3, 4]).collect();
    // Another table's id.
    write_records(&dir, &s, table_id(&dir) ^ 1, &recs);
    let e = Store::open(&dir, &StoreOptions::default()).expect_err("foreign records");
    assert!(
        matches!(e, Error::Records { .. }) && e.to_string().contains("table_id"),
        "{e}"
    );
    std::fs::remove_file(dir.join(RECORDS_FILE)).expect("rm");
    // A flipped byte in a record's data: the read that uses it fails with the file and
    // offset; rows not served from it keep working.
    write_records(&dir, &s, table_id(&dir), &recs);
    let path = dir.join(RECORDS_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    let len = bytes.len();
    // The data region follows the index page of layer 0: flip inside its first unit.
    bytes[8192 + 10] ^= 0x20;
    assert!(len > 8192 + 10);
    std::fs::write(&path, &bytes).expect("write");
    let st = open(&dir, BackendKind::Pread, true);
    let mut out = vec![0u8; 2 * 128];
    let e = st
        .lookup_into(0, &[1, 2], &mut out)
        .expect_err("corrupt record");
    let msg = e.to_string();
    assert!(
        msg.contains("records.bin") && msg.contains("checksum"),
        "{msg}"
    );
    st.lookup_into(0, &[5, 6], &mut out)
        .expect("rows without records");
    assert_eq!(out, expected_rows(&s, 0, &[5, 6], 128));
    // A flipped header byte is refused at open.
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let e = Store::open(&dir, &StoreOptions::default()).expect_err("bad header");
    assert!(e.to_string().contains("checksum"), "{e}");
    // Truncated.
    std::fs::write(&path, &bytes[..100]).expect("write");
    assert!(Store::open(&dir, &StoreOptions::default()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn any_records_any_batch_same_bytes(
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<u64>(), 1..200),
        rec_picks in proptest::collection::vec(any::<u64>(), 2..100),
        coalesce in 0u64..2,
    ) {
        let tmp = tempfile::tempdir().expect("tmp");
        let s = spec(RowLayout::F16, 80, 150, seed);
        let (dir, m) = make_table(tmp.path(), "t", &s);
        let rows0 = m.layers[0].rows;
        let recs: Vec<Vec<u64>> = m.layers.iter().map(|l| {
            let mut v: Vec<u64> = rec_picks.iter().map(|p| p % l.rows).collect();
            if v.len() % 2 == 1 { v.pop(); }
            v
        }).collect();
        write_records(&dir, &s, table_id(&dir), &recs);
        let st = Store::open(&dir, &StoreOptions {
            backend: BackendOptions {
                kind: Some(BackendKind::Pread),
                queue_depth: 4,
                pread_threads: 2,
                coalesce_gap_bytes: coalesce * 4096,
                ..Default::default()
            },
            io_workers: 1,
            cache_bytes: (seed % 3) * 4096,
            ..Default::default()
        }).expect("open");
        let rb = st.row_bytes();
        // Ids drawn mostly from record rows, with duplicates.
        let ids: Vec<u64> = picks.iter().map(|p| if p % 3 == 0 { p % rows0 } else { recs[0][(*p as usize) % recs[0].len()] }).collect();
        let mut out = vec![0u8; ids.len() * rb];
        st.lookup_into(0, &ids, &mut out).expect("lookup");
        prop_assert!(out == expected_rows(&s, 0, &ids, rb));
    }
}
