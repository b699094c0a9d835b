//! A caller that holds its tickets (never waits them) cannot hang the store: once every
//! request slot is held, a further `prefetch` waits at most `StoreOptions::slot_wait` and
//! returns a ticket that resolves to `Error::Limit`; no call blocks for good. 300 held
//! tickets on every backend: each succeeds with the right rows or says `Limit`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engram_store::{BackendKind, BackendOptions, Error, RowLayout, Store, StoreOptions};

const HELD: usize = 300;
const SLOTS: usize = 4;

fn held_tickets_on(kind: BackendKind) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 500, 31);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    if skip_uring(kind) {
        return;
    }
    let st = Store::open(
        &dir,
        &StoreOptions {
            backend: BackendOptions {
                kind: Some(kind),
                queue_depth: 4,
                pread_threads: 2,
                ..BackendOptions::default()
            },
            io_workers: 1,
            max_in_flight: SLOTS,
            slot_wait: Duration::from_millis(2),
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let rows = st.table().rows(0).expect("rows");
    let rb = st.row_bytes();
    let t0 = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    for k in 0..HELD as u64 {
        let ids: Vec<u64> = (0..8).map(|j| (k * 31 + j * 101) % rows).collect();
        let t = st.prefetch(0, &ids, st.alloc_rows(ids.len()).expect("buf"));
        held.push((ids, t));
    }
    let (mut ok, mut limited) = (0, 0);
    for (ids, t) in held {
        let (buf, r) = t.wait();
        match r {
            Ok(()) => {
                assert_eq!(&buf[..], &expected_rows(&s, 0, &ids, rb)[..], "{kind}");
                ok += 1;
            }
            Err(Error::Limit { name, limit, .. }) => {
                assert_eq!(
                    (name, limit),
                    ("StoreOptions::max_in_flight", SLOTS),
                    "{kind}"
                );
                limited += 1;
            }
            Err(e) => unreachable!("{kind}: {e}"),
        }
    }
    assert_eq!(ok + limited, HELD, "{kind}");
    assert!(ok >= SLOTS.min(HELD), "{kind}: {ok} succeeded");
    if matches!(
        kind,
        BackendKind::Pread | BackendKind::Uring | BackendKind::Mmap
    ) {
        assert!(
            limited > 0,
            "{kind}: holding every slot never hit the limit"
        );
    }
    // Well under what 296 unbounded waits would take.
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "{kind}: {:?}",
        t0.elapsed()
    );
    // Slots are back: the store serves again.
    let mut out = vec![0u8; 3 * rb];
    st.lookup_into(0, &[1, 2, 3], &mut out).expect("after");
    assert_eq!(out, expected_rows(&s, 0, &[1, 2, 3], rb));
}

#[test]
fn held_tickets_resolve_or_say_limit_on_every_backend() {
    for kind in ALL_BACKENDS {
        held_tickets_on(kind);
    }
}
