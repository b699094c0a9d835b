//! Fast CPU forward against the naive reference on random shapes (proptest, bounded), and
//! the error paths: bad shapes, mismatched widths, non-finite weights, bad states.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{TOL, assert_close};
use engram_kernels::cpu::{self, SimdLevel};
use engram_kernels::{EngramModule, EngramModuleConfig, EngramModuleWeights, Error, reference};
use proptest::prelude::*;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32 - 0.5
    }
    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale + offset).collect()
    }
}

fn random_module(cfg: &EngramModuleConfig, rng: &mut Lcg, bias: bool) -> EngramModuleWeights {
    let (d, m, dm) = (cfg.hidden_size, cfg.hc_mult, cfg.d_mem);
    let ws = 2.0 / (dm as f32).sqrt();
    EngramModuleWeights {
        value_proj_w: rng.vec(d * dm, ws, 0.0),
        value_proj_b: if bias { rng.vec(d, 0.2, 0.0) } else { vec![] },
        key_proj_w: (0..m).map(|_| rng.vec(d * dm, ws, 0.0)).collect(),
        key_proj_b: (0..m)
            .map(|_| if bias { rng.vec(d, 0.2, 0.0) } else { vec![] })
            .collect(),
        norm1: (0..m).map(|_| rng.vec(d, 1.0, 1.0)).collect(),
        norm2: (0..m).map(|_| rng.vec(d, 1.0, 1.0)).collect(),
        // No convolution (kernel 0, DeepSeek-V4.1): no conv norms either.
        conv_norm: (0..m)
            .filter(|_| cfg.has_conv())
            .map(|_| rng.vec(d, 1.0, 1.0))
            .collect(),
        conv_w: rng.vec(m * d * cfg.kernel_size, 1.0, 0.0),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn fast_matches_reference(
        d in 1usize..40,
        m in 1usize..4,
        dm in 1usize..50,
        n in 2usize..5,
        kernel in 0usize..5,
        batch in 1usize..3,
        seq in 1usize..20,
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut cfg = EngramModuleConfig::new(d, m, dm, n);
        cfg.kernel_size = kernel;
        let mut rng = Lcg(seed);
        let w = random_module(&cfg, &mut rng, bias);
        let e = rng.vec(batch * seq * dm, 4.0, 0.0);
        let hidden = rng.vec(batch * seq * m * d, 4.0, 0.0);
        let exp = reference::engram_forward(&cfg, &w, &e, &hidden, batch, seq);
        let module = EngramModule::new(cfg, w).unwrap();
        let mut y = vec![0f32; hidden.len()];
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            if cpu::supported(level) {
                cpu::set_level(Some(level)).unwrap();
                module.forward_prefill(&e, &hidden, batch, seq, &mut y, None).unwrap();
                assert_close("prefill y", &y, &exp.y, 1e-4);
            }
        }
        cpu::set_level(None).unwrap();
        // Decode, one position at a time.
        let ch = m * d;
        let mut states: Vec<_> = (0..batch).map(|_| module.new_state().unwrap()).collect();
        let mut scratch = module.decode_scratch(batch);
        let mut y_t = vec![0f32; batch * ch];
        for t in 0..seq {
            let mut e_t = Vec::new();
            let mut h_t = Vec::new();
            for b in 0..batch {
                let tok = b * seq + t;
                e_t.extend_from_slice(&e[tok * dm..(tok + 1) * dm]);
                h_t.extend_from_slice(&hidden[tok * ch..(tok + 1) * ch]);
            }
            module.forward_decode(&e_t, &h_t, &mut states, &mut y_t, &mut scratch).unwrap();
            for b in 0..batch {
                let tok = b * seq + t;
                assert_close("decode y", &y_t[b * ch..(b + 1) * ch], &y[tok * ch..(tok + 1) * ch], 1e-4);
            }
        }
    }
}

#[test]
fn without_the_convolution_y_is_the_gated_value() {
    // DeepSeek-V4.1 removed the short convolution: kernel_size 0, y = alpha v exactly, and
    // decode (which keeps no history) equals prefill.
    let mut cfg = EngramModuleConfig::new(8, 2, 16, 4);
    cfg.kernel_size = 0;
    let mut rng = Lcg(11);
    let w = random_module(&cfg, &mut rng, true);
    assert!(w.conv_w.is_empty() && w.conv_norm.is_empty());
    let (batch, seq) = (2, 5);
    let e = rng.vec(batch * seq * 16, 4.0, 0.0);
    let hidden = rng.vec(batch * seq * 2 * 8, 4.0, 0.0);
    let module = EngramModule::new(cfg, w.clone()).unwrap();
    let tr = module
        .forward_prefill_traced(&e, &hidden, batch, seq)
        .unwrap();
    assert_eq!(tr.y, tr.u);
    assert!(tr.conv_out.iter().all(|&c| c == 0.0));
    let exp = reference::engram_forward(&cfg, &w, &e, &hidden, batch, seq);
    assert_eq!(exp.y, exp.u);
    assert_close("no-conv y vs reference", &tr.y, &exp.y, 1e-4);
    let state = module.new_state().unwrap();
    assert_eq!(state.history(), 0);
    // Conv weights given to a module without a convolution are a shape error.
    let mut with_conv = w.clone();
    with_conv.conv_norm = vec![vec![1.0; 8]; 2];
    assert!(matches!(
        EngramModule::new(cfg, with_conv),
        Err(Error::Shape { .. })
    ));
    let mut with_taps = w;
    with_taps.conv_w = vec![0.5; 2 * 8 * 4];
    assert!(matches!(
        EngramModule::new(cfg, with_taps),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = EngramModuleConfig::new(8, 2, 16, 3);
    let mut rng = Lcg(7);
    let w = random_module(&cfg, &mut rng, true);
    // Weights: wrong lengths, wrong branch count, non-finite values.
    let mut bad = w.clone();
    bad.value_proj_w.pop();
    assert!(matches!(
        EngramModule::new(cfg, bad),
        Err(Error::Shape { .. })
    ));
    let mut bad = w.clone();
    bad.norm1.pop();
    assert!(matches!(
        EngramModule::new(cfg, bad),
        Err(Error::Shape { .. })
    ));
    let mut bad = w.clone();
    bad.conv_w[3] = f32::NAN;
    assert!(matches!(
        EngramModule::new(cfg, bad),
        Err(Error::InvalidValue { .. })
    ));
    let mut bad = w.clone();
    bad.key_proj_b[1][0] = f32::INFINITY;
    assert!(matches!(
        EngramModule::new(cfg, bad),
        Err(Error::InvalidValue { .. })
    ));
    let mut bad_cfg = cfg;
    bad_cfg.hidden_size = 0;
    assert!(EngramModule::new(bad_cfg, w.clone()).is_err());
    let mut bad_cfg = cfg;
    bad_cfg.conv_norm_eps = f32::NAN;
    assert!(EngramModule::new(bad_cfg, w.clone()).is_err());

    let module = EngramModule::new(cfg, w).unwrap();
    let (b, t) = (2, 5);
    let e = vec![0.5f32; b * t * 16];
    let h = vec![0.25f32; b * t * 16];
    let mut y = vec![0f32; b * t * 16];
    module.forward_prefill(&e, &h, b, t, &mut y, None).unwrap();
    // Mismatched widths.
    let e_wide = vec![0.5f32; b * t * 17];
    assert!(matches!(
        module.forward_prefill(&e_wide, &h, b, t, &mut y, None),
        Err(Error::WidthMismatch {
            left: 17,
            right: 16,
            ..
        })
    ));
    assert!(matches!(
        module.forward_prefill(&e, &h[1..], b, t, &mut y, None),
        Err(Error::Shape { .. })
    ));
    assert!(
        module
            .forward_prefill(&e, &h, b, t, &mut y[1..], None)
            .is_err()
    );
    assert!(matches!(
        module.forward_prefill(&e, &h, 0, t, &mut y, None),
        Err(Error::EmptyBatch { .. })
    ));
    // States: wrong count, wrong module.
    let mut states = vec![module.new_state().unwrap()];
    assert!(
        module
            .forward_prefill(&e, &h, b, t, &mut y, Some(&mut states))
            .is_err()
    );
    let other = engram_kernels::ConvState::new(99, 4, 3).unwrap();
    let mut states = vec![other.clone(), other];
    let mut scratch = module.decode_scratch(2);
    let mut y1 = vec![0f32; 2 * 16];
    assert!(matches!(
        module.forward_decode(&e[..32], &h[..32], &mut states, &mut y1, &mut scratch),
        Err(Error::WidthMismatch { .. })
    ));
    // Scratch too small.
    let mut states = vec![module.new_state().unwrap(), module.new_state().unwrap()];
    let mut small = module.decode_scratch(1);
    assert!(
        module
            .forward_decode(&e[..32], &h[..32], &mut states, &mut y1, &mut small)
            .is_err()
    );
    module
        .forward_decode(&e[..32], &h[..32], &mut states, &mut y1, &mut scratch)
        .unwrap();
    // A scratch of another module with the same fused width ((1+M) d = 24) is rejected.
    let other_cfg = EngramModuleConfig::new(12, 1, 16, 3);
    let other = EngramModule::new(other_cfg, random_module(&other_cfg, &mut rng, false)).unwrap();
    let mut foreign = other.decode_scratch(2);
    assert!(matches!(
        module.forward_decode(&e[..32], &h[..32], &mut states, &mut y1, &mut foreign),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(states[0].position(), 1);
    assert!(engram_kernels::ConvState::new(0, 4, 3).is_err());
    let _ = TOL;
}
