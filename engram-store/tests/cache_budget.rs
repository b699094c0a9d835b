//! The hot-row cache budget is capped at what the table can use: `--cache-bytes 8G` on a
//! small table allocated (and with mlock, touched) the whole 8 GB, and `16T` or `2^64 - 1`
//! aborted the process on a failed allocation.

mod common;

use common::*;
use engram_store::cache::TABLE_SLOT_SLACK_DIVISOR;
use engram_store::{BackendKind, RowLayout};

#[test]
fn huge_budgets_are_capped_at_the_table() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 101, 5);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let rows: u64 = m.layers.iter().map(|l| l.rows).sum();
    for budget in [16u64 << 40, u64::MAX] {
        let st = store(&dir, BackendKind::Memory, budget, 8);
        let cap = st.stats().cache_capacity_rows;
        assert!(
            cap >= rows && cap <= rows + rows / TABLE_SLOT_SLACK_DIVISOR + 16,
            "budget {budget}: {cap} slots for {rows} rows"
        );
        // And it works: every row read twice, the second time from the cache.
        let ids: Vec<u64> = (0..m.layers[0].rows).collect();
        let mut out = vec![0u8; ids.len() * m.row_bytes as usize];
        st.lookup_into(0, &ids, &mut out).expect("lookup");
        st.lookup_into(0, &ids, &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 0, &ids, m.row_bytes as usize));
        assert!(st.stats().cache_hits > 0);
    }
    // A budget below the table is kept as given.
    let st = store(&dir, BackendKind::Memory, 64 * m.row_bytes * 16, 8);
    assert_eq!(st.stats().cache_capacity_rows, 64 * 16);
}
