//! Hashing throughput, fast vs the naive reference, for the demo (orders 2-3, 8 heads) and
//! V4.1 (orders 2-4, 8 heads) shapes at batch 1 x 4096 and 64 x 512. Throughput is in row
//! ids (elements). `benches/python/hash_numpy.py` (via `scripts/bench-hash.sh`) times the
//! numpy formulation on the same inputs.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engram_benches::{canonical_ids, deepseek_layout, naive_head_indices};
use engram_kernels::EngramConfig;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};

fn bench_hash(c: &mut Criterion) {
    for (shape, config) in [("demo", EngramConfig::demo()), ("v41", EngramConfig::v41())] {
        let layout = deepseek_layout(&config);
        let hasher = NgramHasher::new(&layout, HashOptions::default()).expect("valid layout");
        let heads = hasher.n_hash_heads();
        let mut group = c.benchmark_group(format!("hash/{shape}"));
        for (batch, seq) in [(1usize, 4096usize), (64, 512)] {
            let ids = canonical_ids(batch, seq, 42);
            let mut out = vec![0u64; batch * seq * heads];
            group.throughput(Throughput::Elements((batch * seq * heads) as u64));
            let label = format!("{batch}x{seq}");
            group.bench_function(BenchmarkId::new("fast", &label), |b| {
                b.iter(|| {
                    hasher
                        .hash_into(0, &ids, batch, seq, HashOutput::RowId, &mut out)
                        .expect("shapes agree");
                    std::hint::black_box(&out);
                })
            });
            group.bench_function(BenchmarkId::new("naive", &label), |b| {
                b.iter(|| std::hint::black_box(naive_head_indices(&layout, &ids, batch, seq)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_hash);
criterion_main!(benches);
