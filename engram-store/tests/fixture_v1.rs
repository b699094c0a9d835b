//! The committed format-version-1 table (`tests/fixtures/v1-small`, written by the first
//! release's writer) must open, verify and return the same row bytes in every future version,
//! on every backend. The files themselves are frozen: a changed fixture fails here first.

mod common;

use std::path::{Path, PathBuf};

use engram_store::Table;
use xxhash_rust::xxh3::xxh3_64;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-small")
}

/// (file, bytes, xxh3-64) of the fixture as committed.
const FILES: [(&str, usize, u64); 3] = [
    ("manifest.json", 1750, 0x739e_bad5_e6cf_ad7b),
    ("layer-000-id1.bin", 16400, 0x997c_1b2b_3a72_c832),
    ("layer-001-id4.bin", 16400, 0x1a03_57e4_bb60_5620),
];

/// (layer index, row id, the row's 34 bytes in hex), read from the files when they were
/// written: first and last rows, the last row of a unit and the first of the next (across
/// the unit padding and a block boundary's neighbour), a middle row.
const ROWS: [(usize, u64, &str); 7] = [
    (
        0,
        0,
        "ce2cc6c46fa9ff911f21ad22a98c5d3f654b2f52d499ab9e9650169f32972140fd4a",
    ),
    (
        0,
        119,
        "8a3b2a8ccbe93040b73c9cb843d5cd85ad0a8709631f945530fe97e82b8170653caf",
    ),
    (
        0,
        120,
        "7cd097e53828980d29c37519d52942399100189d9c294cd6eeb10b870e894990ee79",
    ),
    (
        0,
        271,
        "9e646083126cca7a83f9b1720297b59e9889ea176a21d0a880affd3539c7b792490f",
    ),
    (
        1,
        0,
        "6014673a7eb49779c19d121906cfe6ee568211c202723b9815ced1d1f8a7f4c8712f",
    ),
    (
        1,
        200,
        "ca1a1dda7d35a84a91841651740bf5d319078006bddd6f56c5bc9df52f8157c8b767",
    ),
    (
        1,
        347,
        "497e4822fc355694ccbceaf5dc916256dda27a47889ca6c888baebc12d3d1dafa326",
    ),
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn the_fixture_is_unchanged() {
    for (name, len, sum) in FILES {
        let bytes = std::fs::read(fixture().join(name)).expect("fixture file");
        assert_eq!(
            bytes.len(),
            len,
            "{name} was modified: the fixture is frozen"
        );
        assert_eq!(
            xxh3_64(&bytes),
            sum,
            "{name} was modified: the fixture is frozen"
        );
    }
}

#[test]
fn v1_fixture_opens_verifies_and_returns_its_rows() {
    let table = Table::open(&fixture()).expect("the v1 fixture opens");
    let m = table.manifest();
    assert_eq!(m.format_version, 1);
    assert_eq!(m.table_id, "322e204d9a08e8b8");
    assert_eq!(m.row_bytes, 34);
    assert_eq!(
        (table.rows(0).ok(), table.rows(1).ok()),
        (Some(272), Some(348))
    );
    let mut blocks = 0;
    for layer in 0..table.n_layers() {
        blocks += table
            .verify_layer(layer)
            .expect("every checksum holds")
            .blocks;
    }
    assert_eq!(
        blocks, 4,
        "two 8 KiB blocks per layer, the last one partial"
    );
    for (layer, row, hex) in ROWS {
        let mut got = vec![0u8; 34];
        table
            .read_rows_simple(layer, &[row], &mut got)
            .expect("reads");
        assert_eq!(got, unhex(hex), "layer {layer} row {row}");
    }
}

#[test]
fn v1_fixture_rows_are_the_same_on_every_backend() {
    for kind in common::ALL_BACKENDS {
        let store = common::store(&fixture(), kind, 0, 4);
        for (layer, row, hex) in ROWS {
            let mut got = vec![0u8; 34];
            store.lookup_into(layer, &[row], &mut got).expect("reads");
            assert_eq!(got, unhex(hex), "{kind:?}: layer {layer} row {row}");
        }
    }
}
