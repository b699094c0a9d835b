//! Engram module compute: decode step (one position, batch 1 and 64) and prefill, fast vs
//! the naive reference, for the demo shape (d = 1024, M = 4, d_mem = 16 x 64 = 1024) and a
//! V4.1-like shape (24 heads x 256 FP8 values: d_mem = 6144; d = 2048 and M = 4 assumed, as
//! the V4.1 backbone width is not public). Throughput is in tokens (positions x sequences);
//! FLOPs per token are dominated by the fused projection, 2 (1 + M) d d_mem.
//! Also: FP8 row dequantization into e, and this machine's measured peaks (a large sgemm
//! through the same GEMM crate, and a streaming read) to put the numbers in proportion.
//! `ENGRAM_FORCE_SCALAR=1 cargo bench --bench kernels` measures the scalar kernels.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engram_kernels::{
    EngramModule, EngramModuleConfig, EngramModuleWeights, RowLayout, memory_vectors,
    quantize_rows, reference,
};

struct Lcg(u64);
impl Lcg {
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((self.0 >> 40) as f32) / (1u64 << 24) as f32 - 0.5) * scale + offset
            })
            .collect()
    }
}

fn module(d: usize, m: usize, dm: usize, n: usize) -> EngramModule {
    let cfg = EngramModuleConfig::new(d, m, dm, n);
    let mut r = Lcg(1);
    let ws = 2.0 / (dm as f32).sqrt();
    let w = EngramModuleWeights {
        value_proj_w: r.vec(d * dm, ws, 0.0),
        value_proj_b: r.vec(d, 0.1, 0.0),
        key_proj_w: (0..m).map(|_| r.vec(d * dm, ws, 0.0)).collect(),
        key_proj_b: (0..m).map(|_| r.vec(d, 0.1, 0.0)).collect(),
        norm1: (0..m).map(|_| r.vec(d, 1.0, 1.0)).collect(),
        norm2: (0..m).map(|_| r.vec(d, 1.0, 1.0)).collect(),
        conv_norm: (0..m).map(|_| r.vec(d, 1.0, 1.0)).collect(),
        conv_w: r.vec(m * d * 4, 1.0, 0.0),
    };
    EngramModule::new(cfg, w).expect("valid module")
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

fn bench_module(c: &mut Criterion) {
    // (label, d, M, d_mem, N, prefill positions, naive positions)
    for (shape, d, m, dm, n, prefill_t, naive_t) in [
        (
            "demo", 1024usize, 4usize, 1024usize, 3usize, 4096usize, 8usize,
        ),
        ("v41", 2048, 4, 6144, 4, 512, 2),
    ] {
        let md = module(d, m, dm, n);
        let cfg = *md.config();
        let ch = cfg.channels();
        let mut r = Lcg(7);
        let mut g = configure(c, &format!("engram/{shape}"));
        for batch in [1usize, 64] {
            let e = r.vec(batch * dm, 2.0, 0.0);
            let h = r.vec(batch * ch, 2.0, 0.0);
            let mut y = vec![0f32; batch * ch];
            let mut states: Vec<_> = (0..batch).map(|_| md.new_state().expect("state")).collect();
            let mut scratch = md.decode_scratch(batch);
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(BenchmarkId::new("decode_fast_1thread", batch), |b| {
                b.iter(|| {
                    md.forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                        .expect("shapes agree");
                    std::hint::black_box(&y);
                })
            });
            engram_kernels::cpu::set_level(Some(engram_kernels::cpu::SimdLevel::Scalar))
                .expect("scalar is always supported");
            g.bench_function(BenchmarkId::new("decode_scalar_1thread", batch), |b| {
                b.iter(|| {
                    md.forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                        .expect("shapes agree");
                    std::hint::black_box(&y);
                })
            });
            engram_kernels::cpu::set_level(None).expect("detected level");
            // Called from inside the rayon pool: the projection forks over all cores.
            g.bench_function(BenchmarkId::new("decode_fast_pool", batch), |b| {
                rayon::scope(|_| {
                    b.iter(|| {
                        md.forward_decode(&e, &h, &mut states, &mut y, &mut scratch)
                            .expect("shapes agree");
                        std::hint::black_box(&y);
                    })
                })
            });
        }
        let e = r.vec(prefill_t * dm, 2.0, 0.0);
        let h = r.vec(prefill_t * ch, 2.0, 0.0);
        let mut y = vec![0f32; prefill_t * ch];
        g.throughput(Throughput::Elements(prefill_t as u64));
        let mut pre = engram_kernels::PrefillScratch::default();
        g.bench_function(BenchmarkId::new("prefill_fast", prefill_t), |b| {
            b.iter(|| {
                md.forward_prefill_with(&e, &h, 1, prefill_t, &mut y, None, &mut pre)
                    .expect("shapes agree");
                std::hint::black_box(&y);
            })
        });
        // The same fast path with the portable (scalar-dispatch) kernels; the GEMM crate
        // keeps its own SIMD, so this isolates the hand-dispatched kernels.
        engram_kernels::cpu::set_level(Some(engram_kernels::cpu::SimdLevel::Scalar))
            .expect("scalar is always supported");
        g.bench_function(
            BenchmarkId::new("prefill_fast_scalar_kernels", prefill_t),
            |b| {
                b.iter(|| {
                    md.forward_prefill(&e, &h, 1, prefill_t, &mut y, None)
                        .expect("shapes agree");
                    std::hint::black_box(&y);
                })
            },
        );
        engram_kernels::cpu::set_level(None).expect("detected level");
        g.throughput(Throughput::Elements(naive_t as u64));
        g.bench_function(BenchmarkId::new("prefill_naive", naive_t), |b| {
            b.iter(|| {
                std::hint::black_box(reference::engram_forward(
                    &cfg,
                    md.weights(),
                    &e[..naive_t * dm],
                    &h[..naive_t * ch],
                    1,
                    naive_t,
                ))
            })
        });
        g.finish();
    }
}

fn bench_dequant(c: &mut Criterion) {
    // V4.1 rows: 24 heads x (256 E4M3 + 8 E8M0) = 6336 bytes per token.
    let (heads, width, tokens) = (24usize, 256usize, 4096usize);
    let src = Lcg(3).vec(tokens * heads * width, 8.0, 0.0);
    let mut g = configure(c, "dequant");
    for dtype in [RowLayout::V41, RowLayout::Bf16] {
        let rb = dtype.row_bytes(width).expect("valid");
        let mut rows = vec![0u8; tokens * heads * rb];
        quantize_rows(dtype, width, &src, &mut rows).expect("finite");
        let mut e = vec![0f32; tokens * heads * width];
        g.throughput(Throughput::Bytes(rows.len() as u64));
        g.bench_function(BenchmarkId::new(format!("{dtype:?}"), tokens), |b| {
            b.iter(|| {
                memory_vectors(dtype, width, heads, &rows, &mut e).expect("shapes");
                std::hint::black_box(&e);
            })
        });
    }
    g.finish();
}

fn bench_peak(c: &mut Criterion) {
    let mut g = configure(c, "peak");
    let n = 1024usize;
    let a = Lcg(5).vec(n * n, 1.0, 0.0);
    let w = Lcg(6).vec(n * n, 1.0, 0.0);
    let mut out = vec![0f32; n * n];
    g.throughput(Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("sgemm_1024_flops_1thread", |b| {
        b.iter(|| {
            engram_kernels::cpu::gemm::sgemm_nt(&a, n, &w, n, n, &mut out);
            std::hint::black_box(&out);
        })
    });
    let big = vec![1.0f32; 64 << 20]; // 256 MiB
    g.throughput(Throughput::Bytes((big.len() * 4) as u64));
    g.bench_function("stream_read_256MiB_1thread", |b| {
        b.iter(|| std::hint::black_box(engram_kernels::cpu::sumsq(&big)))
    });
    g.finish();
}

criterion_group!(benches, bench_peak, bench_dequant, bench_module);
criterion_main!(benches);
