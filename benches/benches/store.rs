//! Storage-tier micro-benchmarks: batch planning, the hot-row cache and the memory-tier
//! gather through the store (the side-by-side harness is `store_vs_baselines`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engram_kernels::EngramConfig;
use engram_store::cache::RowCache;
use engram_store::format::Geometry;
use engram_store::planner::{Plan, PlanParams};
use engram_store::{BackendKind, BackendOptions, RowLayout, Store, StoreOptions};
use engram_testbed::synth::{SynthSpec, write_synth};
use engram_testbed::workload::{RowDist, RowSampler};

fn bench_store(c: &mut Criterion) {
    let rows = 384_006_168u64;
    let mut sampler = RowSampler::new(rows, RowDist::Zipf(1.0), 3).expect("sampler");
    let mut ids = vec![0u64; 4096];
    sampler.fill(&mut ids);
    let geo = Geometry::for_row_bytes(264);
    let params = PlanParams::new(
        &geo,
        4096,
        geo.data_bytes(rows).expect("size"),
        4096,
        0,
        65536,
    )
    .expect("valid read shape");
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(ids.len() as u64));
    let mut plan = Plan::with_capacity(ids.len());
    g.bench_function("plan_4096_zipf_ids", |b| {
        b.iter(|| plan.build(&ids, &[], &geo, &params, None))
    });
    let cache = RowCache::new(256 << 20, 264, false)
        .expect("alloc")
        .expect("cache");
    let row = [7u8; 264];
    let mut out = [0u8; 264];
    g.bench_function("cache_get_admit_4096_zipf_ids", |b| {
        b.iter(|| {
            for &id in &ids {
                if !cache.get(0, id, &mut out) {
                    cache.admit(0, id, &row);
                }
            }
        })
    });
    let dir = std::env::temp_dir().join(format!("engram-bench-store-{}", std::process::id()));
    let spec = SynthSpec {
        config: EngramConfig {
            base_sizes: vec![20_000; 3],
            ..EngramConfig::v41()
        },
        row_layout: RowLayout::Fp8E4m3E8m0 { scale_block: 32 },
        dim: 256,
        seed: 1,
        block_bytes: None,
    };
    write_synth(&dir, &spec, true, |_, _, _| {}).expect("synth");
    let store = Store::open(
        &dir,
        &StoreOptions {
            backend: BackendOptions {
                kind: Some(BackendKind::Memory),
                ..Default::default()
            },
            io_workers: 1,
            ..Default::default()
        },
    )
    .expect("store");
    let layer_rows = store.table().rows(0).expect("rows");
    let mut local = RowSampler::new(layer_rows, RowDist::Uniform, 5).expect("sampler");
    let mut lids = vec![0u64; 4096];
    local.fill(&mut lids);
    let mut buf = vec![0u8; lids.len() * 264];
    g.bench_function("memory_lookup_4096_rows", |b| {
        b.iter(|| store.lookup_into(0, &lids, &mut buf).expect("lookup"))
    });
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_store);
criterion_main!(benches);
