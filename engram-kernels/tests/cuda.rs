//! CUDA backend tests. Without the `cuda` feature: every entry point is a typed
//! "not compiled" error. With it: NVRTC compiles every kernel for sm_90 (needs only
//! libnvrtc, found through ENGRAM_NVRTC_LIB or LD_LIBRARY_PATH; skipped with a printed
//! reason otherwise, and required when ENGRAM_REQUIRE_NVRTC=1); without a driver or device
//! every entry point is a typed error; with a device, the same checks as the CPU tests
//! (conformance vectors, hashing, dequantization) run on the GPU.
//!
//! Where a GPU exists, set `ENGRAM_REQUIRE_GPU=1` (`scripts/test.sh` and
//! `scripts/gpu-check.sh` do): then an engine that fails to start fails these tests instead
//! of skipping them, so a regression in device init cannot pass as "no GPU here".
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use engram_kernels::Error;
use engram_kernels::cuda::CudaEngine;

#[cfg(not(feature = "cuda"))]
#[test]
fn not_compiled_is_a_typed_error() {
    assert!(matches!(CudaEngine::new(0), Err(Error::NotCompiled { .. })));
    assert!(matches!(
        engram_kernels::cuda::driver_available(),
        Err(Error::NotCompiled { .. })
    ));
}

#[cfg(feature = "cuda")]
mod with_feature {
    use super::common::{Case, TOL, assert_close, forward_files};
    use super::*;
    use engram_kernels::cuda::{KERNEL_NAMES, compile_cubin, driver_available, nvrtc_available};
    use engram_kernels::gather::row_ids_from_i64;
    use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
    use engram_kernels::skip::skipped;
    use engram_kernels::{
        EngramConfig, EngramLayout, EngramModule, RowLayout, dequantize_rows, gather_rows,
        quantize_rows,
    };

    /// `ENGRAM_REQUIRE_GPU=1`: a CUDA engine must start (a GPU is present).
    fn gpu_required() -> bool {
        std::env::var("ENGRAM_REQUIRE_GPU").as_deref() == Ok("1")
    }

    fn engine() -> Option<CudaEngine> {
        match CudaEngine::new(0) {
            Ok(e) => Some(e),
            Err(err) => {
                assert!(
                    !gpu_required(),
                    "ENGRAM_REQUIRE_GPU=1 but the CUDA engine did not start: {err}"
                );
                skipped(&format!("no CUDA device: {err}"));
                assert!(
                    matches!(err, Error::Unavailable { .. } | Error::Cuda { .. }),
                    "unexpected error kind {err:?}"
                );
                None
            }
        }
    }

    #[test]
    fn every_kernel_compiles_for_sm90() {
        if let Err(err) = nvrtc_available() {
            assert!(
                std::env::var("ENGRAM_REQUIRE_NVRTC").as_deref() != Ok("1"),
                "ENGRAM_REQUIRE_NVRTC=1 but {err}"
            );
            skipped(&err.to_string());
            return;
        }
        let report = compile_cubin("sm_90").unwrap_or_else(|e| panic!("{e}"));
        println!(
            "sm_90 cubin: {} bytes\n{:<20} {:>9} {:>12} {:>11} {:>6}",
            report.cubin_bytes, "kernel", "registers", "spill_store", "spill_load", "stack"
        );
        for k in &report.kernels {
            println!(
                "{:<20} {:>9} {:>12} {:>11} {:>6}",
                k.name,
                k.registers.map_or("?".into(), |v| v.to_string()),
                k.spill_stores.map_or("?".into(), |v| v.to_string()),
                k.spill_loads.map_or("?".into(), |v| v.to_string()),
                k.stack_bytes.map_or("?".into(), |v| v.to_string()),
            );
        }
        assert!(report.cubin_bytes > 0);
        let ptx = engram_kernels::cuda::ptx().unwrap_or_else(|e| panic!("{e}"));
        for name in KERNEL_NAMES {
            assert!(ptx.contains(name), "{name} missing from the PTX");
        }
        for name in KERNEL_NAMES {
            let k = report.kernels.iter().find(|k| k.name == name);
            assert!(
                k.is_some(),
                "{name} missing from the ptxas log:\n{}",
                report.log
            );
            assert!(
                k.and_then(|k| k.registers).is_some(),
                "{name}: no register count"
            );
        }
    }

    #[test]
    fn no_driver_is_a_typed_error() {
        if driver_available().is_ok() {
            skipped("a CUDA driver is present (this test checks the error without one)");
            return;
        }
        assert!(
            !gpu_required(),
            "ENGRAM_REQUIRE_GPU=1 but no CUDA driver loads: {:?}",
            driver_available()
        );
        assert!(matches!(CudaEngine::new(0), Err(Error::Unavailable { .. })));
    }

    #[test]
    fn cuda_matches_vectors_and_cpu() {
        let Some(gpu) = engine() else { return };
        println!("device: {}", gpu.device_name().unwrap_or_default());
        for path in forward_files() {
            let case = Case::load(&path);
            let (cfg, w) = case.module();
            let (b, t) = case.batch_seq();
            let module = EngramModule::new(cfg, w).unwrap();
            // Gather on the device, exact.
            let table = case.f32s("multi_head_embedding.embedding.weight");
            let bytes: Vec<u8> = table.iter().flat_map(|x| x.to_le_bytes()).collect();
            let ids = row_ids_from_i64(case.i64s("input.row_ids")).unwrap();
            let width = case.usize("head_dim");
            let mut e = vec![0f32; ids.len() * width];
            gpu.gather_rows(RowLayout::F32, width, &bytes, &ids, &mut e)
                .unwrap();
            assert_eq!(e, case.f32s("expected.e"));
            // Forward.
            let dev = gpu.upload_module(&module).unwrap();
            let hidden = case.f32s("input.hidden_states");
            let mut y = vec![0f32; hidden.len()];
            gpu.forward_prefill(&module, &dev, &e, hidden, b, t, &mut y)
                .unwrap();
            assert_close("cuda y", &y, case.f32s("expected.y"), TOL);
            // Decode step by step on the device, from a fresh state and from a CPU prefix.
            let (dm, ch) = (cfg.d_mem, cfg.channels());
            let mut st = gpu.new_decode_state(&module, b).unwrap();
            let split = t / 2;
            let mut cpu_states: Vec<_> = (0..b).map(|_| module.new_state().unwrap()).collect();
            if split > 0 {
                let mut e_p = Vec::new();
                let mut h_p = Vec::new();
                for s in 0..b {
                    e_p.extend_from_slice(&e[s * t * dm..(s * t + split) * dm]);
                    h_p.extend_from_slice(&hidden[s * t * ch..(s * t + split) * ch]);
                }
                let mut y_p = vec![0f32; b * split * ch];
                module
                    .forward_prefill(&e_p, &h_p, b, split, &mut y_p, Some(&mut cpu_states))
                    .unwrap();
            }
            let mut st2 = gpu.upload_states(&module, &cpu_states).unwrap();
            let mut y_t = vec![0f32; b * ch];
            for pos in 0..t {
                let mut e_t = Vec::new();
                let mut h_t = Vec::new();
                for s in 0..b {
                    let tok = s * t + pos;
                    e_t.extend_from_slice(&e[tok * dm..(tok + 1) * dm]);
                    h_t.extend_from_slice(&hidden[tok * ch..(tok + 1) * ch]);
                }
                let exp: Vec<f32> = (0..b)
                    .flat_map(|s| y[(s * t + pos) * ch..(s * t + pos + 1) * ch].to_vec())
                    .collect();
                gpu.forward_decode(&module, &dev, &e_t, &h_t, &mut st, &mut y_t)
                    .unwrap();
                assert_close("cuda decode", &y_t, &exp, TOL);
                if pos >= split {
                    gpu.forward_decode(&module, &dev, &e_t, &h_t, &mut st2, &mut y_t)
                        .unwrap();
                    assert_close("cuda decode after cpu prefill", &y_t, &exp, TOL);
                }
            }
            // Hashing from compressed ids.
            let c = &case.config;
            let config = EngramConfig {
                max_ngram: case.usize("max_ngram"),
                n_heads: case.usize("n_head_per_ngram"),
                base_sizes: serde_json::from_value(c["base_sizes"].clone()).unwrap(),
                layer_ids: serde_json::from_value(c["layer_ids"].clone()).unwrap(),
                seed: c["hash_seed"].as_u64().unwrap(),
                pad_id: c["pad_id"].as_i64().unwrap(),
            };
            let layout = EngramLayout::new(
                &config,
                c["compressed_vocab_size"].as_u64().unwrap(),
                c["compressed_pad_id"].as_i64().unwrap(),
            )
            .unwrap();
            let li = layout.layer_index(c["layer_id"].as_u64().unwrap()).unwrap();
            let mut got = vec![0u64; ids.len()];
            let compressed = case.i64s("input.compressed_ids");
            gpu.hash(&layout, li, compressed, b, t, HashOutput::RowId, &mut got)
                .unwrap();
            assert_eq!(got, ids);
        }
    }

    #[test]
    fn cuda_hash_and_dequant_match_cpu() {
        let Some(gpu) = engine() else { return };
        // Hashing with wrapping negative ids and big multipliers.
        let layout = EngramLayout::new(&EngramConfig::v41(), 3, 2).unwrap();
        let hasher = NgramHasher::new(&layout, HashOptions::default()).unwrap();
        let ids: Vec<i64> = (0..4 * 257)
            .map(|i: i64| if i % 17 == 0 { -1 - i } else { i % 3 })
            .collect();
        let heads = hasher.n_hash_heads();
        let mut cpu = vec![0u64; ids.len() * heads];
        let mut gpu_out = vec![0u64; ids.len() * heads];
        for kind in [HashOutput::HeadIndex, HashOutput::RowId] {
            hasher.hash_into(1, &ids, 4, 257, kind, &mut cpu).unwrap();
            gpu.hash(&layout, 1, &ids, 4, 257, kind, &mut gpu_out)
                .unwrap();
            assert_eq!(cpu, gpu_out);
        }
        // Dequantization of every dtype, including every E4M3 code.
        let width = 256;
        let src: Vec<f32> = (0..width * 16)
            .map(|i| ((i * 37) % 101) as f32 * 0.37 - 18.0)
            .collect();
        for dtype in [
            RowLayout::F32,
            RowLayout::Bf16,
            RowLayout::F16,
            RowLayout::V41,
        ] {
            let rb = dtype.row_bytes(width).unwrap();
            let mut bytes = vec![0u8; rb * 16];
            quantize_rows(dtype, width, &src, &mut bytes).unwrap();
            if let RowLayout::Fp8E4m3E8m0 { .. } = dtype {
                for (i, b) in bytes[..width].iter_mut().enumerate() {
                    *b = i as u8; // every code, NaN codes included
                }
            }
            let mut a = vec![0f32; src.len()];
            let mut g = vec![0f32; src.len()];
            dequantize_rows(dtype, width, &bytes, &mut a).unwrap();
            gpu.dequantize_rows(dtype, width, &bytes, &mut g).unwrap();
            for (x, y) in a.iter().zip(&g) {
                assert!(
                    x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    "{dtype:?}"
                );
            }
            let ids = [3u64, 0, 15, 15];
            let mut a = vec![0f32; 4 * width];
            let mut g = vec![0f32; 4 * width];
            gather_rows(dtype, width, &bytes, &ids, &mut a).unwrap();
            gpu.gather_rows(dtype, width, &bytes, &ids, &mut g).unwrap();
            assert_eq!(a, g);
            assert!(
                gpu.gather_rows(dtype, width, &bytes, &[16], &mut g[..width])
                    .is_err()
            );
        }
        // The pinned-buffer path gives the same values.
        let rb = RowLayout::V41.row_bytes(width).unwrap();
        let mut bytes = vec![0u8; rb * 16];
        quantize_rows(RowLayout::V41, width, &src, &mut bytes).unwrap();
        let mut pinned = gpu.alloc_pinned_rows(bytes.len()).unwrap();
        pinned.as_mut_slice().unwrap().copy_from_slice(&bytes);
        let mut a = vec![0f32; src.len()];
        let mut g = vec![0f32; src.len()];
        dequantize_rows(RowLayout::V41, width, &bytes, &mut a).unwrap();
        gpu.dequantize_pinned(RowLayout::V41, width, &pinned, 16, &mut g)
            .unwrap();
        assert_eq!(a, g);
        assert!(
            gpu.dequantize_pinned(RowLayout::V41, width, &pinned, 17, &mut g)
                .is_err()
        );
        let mut bad = vec![0u8; 264];
        bad[256] = 255;
        let mut out = vec![0f32; 256];
        assert!(matches!(
            gpu.dequantize_rows(RowLayout::V41, 256, &bad, &mut out),
            Err(Error::InvalidValue { .. })
        ));
    }
}

/// Timing table for scripts/gpu-check.sh (ignored by default; prints, asserts nothing about
/// time). Each row: the same call on the CPU fast path and on the device, best of 5.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "timing; run by scripts/gpu-check.sh"]
fn cuda_timing_table() {
    use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
    use engram_kernels::{
        EngramConfig, EngramLayout, EngramModule, EngramModuleConfig, EngramModuleWeights,
        RowLayout, memory_vectors, quantize_rows,
    };
    use std::time::Instant;

    let gpu = match CudaEngine::new(0) {
        Ok(gpu) => gpu,
        Err(err) => {
            assert!(
                std::env::var("ENGRAM_REQUIRE_GPU").as_deref() != Ok("1"),
                "ENGRAM_REQUIRE_GPU=1 but the CUDA engine did not start: {err}"
            );
            engram_kernels::skip::skipped(&format!("no CUDA device: {err}"));
            return;
        }
    };
    fn best(mut f: impl FnMut()) -> f64 {
        f();
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    }
    let mut rows: Vec<(String, f64, f64)> = Vec::new();

    // Hashing: V4.1 layout, 64 x 512 positions.
    let layout = EngramLayout::new(&EngramConfig::v41(), 99_092, 2).unwrap();
    let hasher = NgramHasher::new(&layout, HashOptions::default()).unwrap();
    let (b, t) = (64usize, 512usize);
    let ids: Vec<i64> = (0..b * t).map(|i| (i as i64 * 7919) % 99_092).collect();
    let mut out = vec![0u64; b * t * hasher.n_hash_heads()];
    let cpu = best(|| {
        hasher
            .hash_into(0, &ids, b, t, HashOutput::RowId, &mut out)
            .unwrap();
    });
    let dev = best(|| {
        gpu.hash(&layout, 0, &ids, b, t, HashOutput::RowId, &mut out)
            .unwrap();
    });
    rows.push(("hash v41 64x512".into(), cpu, dev));

    // Dequantize V4.1 rows for 4096 tokens x 24 heads.
    let (heads, width, tokens) = (24usize, 256usize, 4096usize);
    let src: Vec<f32> = (0..tokens * heads * width)
        .map(|i| ((i % 977) as f32) * 0.01 - 4.0)
        .collect();
    let mut bytes = vec![0u8; tokens * heads * 264];
    quantize_rows(RowLayout::V41, width, &src, &mut bytes).unwrap();
    let mut e = vec![0f32; src.len()];
    let cpu = best(|| memory_vectors(RowLayout::V41, width, heads, &bytes, &mut e).unwrap());
    let dev = best(|| {
        gpu.dequantize_rows(RowLayout::V41, width, &bytes, &mut e)
            .unwrap()
    });
    rows.push(("dequant fp8 4096x24x256".into(), cpu, dev));

    // Module prefill, demo shape, 1 x 4096.
    let (d, m, dm, tt) = (1024usize, 4usize, 1024usize, 4096usize);
    let cfg = EngramModuleConfig::new(d, m, dm, 3);
    let val = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 * s - s / 2.0)
            .collect()
    };
    let w = EngramModuleWeights {
        value_proj_w: val(d * dm, 0.06),
        value_proj_b: val(d, 0.1),
        key_proj_w: (0..m).map(|_| val(d * dm, 0.06)).collect(),
        key_proj_b: (0..m).map(|_| val(d, 0.1)).collect(),
        norm1: (0..m).map(|_| vec![1.0; d]).collect(),
        norm2: (0..m).map(|_| vec![1.0; d]).collect(),
        conv_norm: (0..m).map(|_| vec![1.0; d]).collect(),
        conv_w: val(m * d * 4, 1.0),
    };
    let module = EngramModule::new(cfg, w).unwrap();
    let dev_w = gpu.upload_module(&module).unwrap();
    let e = val(tt * dm, 2.0);
    let h = val(tt * m * d, 2.0);
    let mut y = vec![0f32; tt * m * d];
    let cpu = best(|| module.forward_prefill(&e, &h, 1, tt, &mut y, None).unwrap());
    let mut y2 = vec![0f32; tt * m * d];
    let dev = best(|| {
        gpu.forward_prefill(&module, &dev_w, &e, &h, 1, tt, &mut y2)
            .unwrap()
    });
    let worst = y
        .iter()
        .zip(&y2)
        .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
        .fold(0f32, f32::max);
    rows.push((
        format!("prefill demo 1x4096 (max diff {worst:.1e})"),
        cpu,
        dev,
    ));

    // Decode step, demo shape, batch 64.
    let bsz = 64usize;
    let e1 = val(bsz * dm, 2.0);
    let h1 = val(bsz * m * d, 2.0);
    let mut y1 = vec![0f32; bsz * m * d];
    let mut states: Vec<_> = (0..bsz).map(|_| module.new_state().unwrap()).collect();
    let mut scratch = module.decode_scratch(bsz);
    let cpu = best(|| {
        module
            .forward_decode(&e1, &h1, &mut states, &mut y1, &mut scratch)
            .unwrap()
    });
    let mut dst = gpu.new_decode_state(&module, bsz).unwrap();
    let dev = best(|| {
        gpu.forward_decode(&module, &dev_w, &e1, &h1, &mut dst, &mut y1)
            .unwrap()
    });
    rows.push(("decode step demo batch 64".into(), cpu, dev));

    println!(
        "\n{:<44} {:>10} {:>10} {:>8}",
        "operation", "cpu ms", "cuda ms", "speedup"
    );
    for (name, c, g) in rows {
        println!("{name:<44} {c:>10.3} {g:>10.3} {:>7.1}x", c / g);
    }
}
