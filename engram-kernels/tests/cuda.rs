//! CUDA backend tests. Without the `cuda` feature: every entry point is a typed
//! "not compiled" error. With it: NVRTC compiles every kernel for sm_90 (needs only
//! libnvrtc, found through ENGRAM_NVRTC_LIB or LD_LIBRARY_PATH; skipped with a printed
//! reason otherwise, and required when ENGRAM_REQUIRE_NVRTC=1); without a driver or device
//! every entry point is a typed error; with a device, the same checks as the CPU tests
//! (conformance vectors, hashing, dequantization) run on the GPU.
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
    use engram_kernels::{
        EngramConfig, EngramLayout, EngramModule, RowDtype, dequantize_rows, gather_rows,
        quantize_rows,
    };

    fn engine() -> Option<CudaEngine> {
        match CudaEngine::new(0) {
            Ok(e) => Some(e),
            Err(err) => {
                println!("skipped: no CUDA device: {err}");
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
            println!("skipped: {err}");
            return;
        }
        let report = compile_cubin("sm_90").unwrap_or_else(|e| panic!("{e}"));
        println!(
            "sm_90 cubin: {} bytes\n{:<16} {:>9} {:>12} {:>11} {:>6}",
            report.cubin_bytes, "kernel", "registers", "spill_store", "spill_load", "stack"
        );
        for k in &report.kernels {
            println!(
                "{:<16} {:>9} {:>12} {:>11} {:>6}",
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
            println!("skipped: a CUDA driver is present");
            return;
        }
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
            gpu.gather_rows(RowDtype::F32, width, &bytes, &ids, &mut e)
                .unwrap();
            assert_eq!(e, case.f32s("expected.e"));
            // Forward.
            let dev = gpu.upload_module(&module).unwrap();
            let hidden = case.f32s("input.hidden_states");
            let mut y = vec![0f32; hidden.len()];
            gpu.forward_prefill(&module, &dev, &e, hidden, b, t, &mut y)
                .unwrap();
            assert_close("cuda y", &y, case.f32s("expected.y"), TOL);
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
        for dtype in [RowDtype::F32, RowDtype::Bf16, RowDtype::F16, RowDtype::V41] {
            let rb = dtype.row_bytes(width).unwrap();
            let mut bytes = vec![0u8; rb * 16];
            quantize_rows(dtype, width, &src, &mut bytes).unwrap();
            if let RowDtype::Fp8E4m3 { .. } = dtype {
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
        let mut bad = vec![0u8; 264];
        bad[256] = 255;
        let mut out = vec![0f32; 256];
        assert!(matches!(
            gpu.dequantize_rows(RowDtype::V41, 256, &bad, &mut out),
            Err(Error::InvalidValue { .. })
        ));
    }
}
