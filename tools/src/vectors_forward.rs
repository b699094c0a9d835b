//! `engram-forward-v1` checking for `engram vectors`: one safetensors file per case, holding
//! the module's parameters, its inputs and every intermediate (conformance README, second
//! half). Recomputes, from the file's own inputs and parameters:
//!
//! * the hash (`head_indices`, `row_ids`) from `input.compressed_ids` and the case config,
//!   exactly;
//! * `e` by gathering `input.row_ids` from the embedding table, exactly;
//! * every float intermediate and `Y` through the fast CPU forward, within
//!   `|got - exp| <= 1e-5 * (1 + |exp|)`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use engram_kernels::gather::row_ids_from_i64;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::{
    EngramConfig, EngramLayout, EngramModule, EngramModuleConfig, EngramModuleWeights, RowLayout,
    gather_rows,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::vectors::{MAX_VECTOR_FILE_BYTES, VectorReport};
use engram_files::file::read_regular;

/// Absolute and relative tolerance of float tensors.
pub const FORWARD_TOLERANCE: f64 = 1e-5;

#[derive(Debug, Deserialize)]
struct ForwardConfig {
    #[serde(default)]
    case: Option<String>,
    hidden_size: usize,
    hc_mult: usize,
    max_ngram: usize,
    n_head_per_ngram: usize,
    head_dim: usize,
    d_mem: usize,
    base_sizes: Vec<u64>,
    layer_ids: Vec<u64>,
    layer_id: u64,
    hash_seed: u64,
    pad_id: i64,
    compressed_pad_id: i64,
    compressed_vocab_size: u64,
    /// 0 or absent: a module without the short convolution (DeepSeek-V4.1): no
    /// `short_conv.*` tensors, and the expected `y` is `u`.
    #[serde(default)]
    kernel_size: usize,
    #[serde(default)]
    conv_dilation: usize,
    key_norm_eps: f64,
    #[serde(default)]
    conv_norm_eps: f64,
    batch: usize,
    seq_len: usize,
}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

struct Tensors {
    file: String,
    map: HashMap<String, (Vec<usize>, Data)>,
}

impl Tensors {
    fn f32s(&self, name: &str, numel: usize) -> Result<&[f32]> {
        match self.map.get(name) {
            Some((shape, Data::F32(v))) => {
                ensure!(
                    v.len() == numel,
                    "{}: {name} has shape {shape:?} ({} values), expected {numel} values",
                    self.file,
                    v.len()
                );
                Ok(v)
            }
            Some(_) => bail!("{}: {name} is not float32", self.file),
            None => bail!("{}: tensor {name} is missing", self.file),
        }
    }

    fn i64s(&self, name: &str, numel: usize) -> Result<&[i64]> {
        match self.map.get(name) {
            Some((shape, Data::I64(v))) => {
                ensure!(
                    v.len() == numel,
                    "{}: {name} has shape {shape:?} ({} values), expected {numel} values",
                    self.file,
                    v.len()
                );
                Ok(v)
            }
            Some(_) => bail!("{}: {name} is not int64", self.file),
            None => bail!("{}: tensor {name} is missing", self.file),
        }
    }
}

fn load(path: &Path) -> Result<(ForwardConfig, Tensors)> {
    let file = path.display().to_string();
    let bytes = read_regular(path, MAX_VECTOR_FILE_BYTES)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{file}: not a safetensors file"))?;
    let config_json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .with_context(|| format!("{file}: no \"config\" in the safetensors __metadata__"))?;
    let config: ForwardConfig = serde_json::from_str(config_json).with_context(|| {
        format!("{file}: the metadata config is not an engram-forward-v1 config")
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{file}: malformed safetensors"))?;
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        let data = match view.dtype() {
            Dtype::F32 => Data::F32(
                view.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::I64 => Data::I64(
                view.data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
            other => bail!("{file}: tensor {name} has unsupported dtype {other:?}"),
        };
        map.insert(name, (view.shape().to_vec(), data));
    }
    Ok((config, Tensors { file, map }))
}

fn compare_floats(
    report: &mut VectorReport,
    case: &str,
    name: &str,
    got: &[f32],
    exp: &[f32],
    exact: bool,
) {
    for (i, (&g, &e)) in got.iter().zip(exp).enumerate() {
        report.checked += 1;
        let ok = if exact {
            g.to_bits() == e.to_bits() || g == e
        } else {
            (f64::from(g) - f64::from(e)).abs() <= FORWARD_TOLERANCE * (1.0 + f64::from(e).abs())
        };
        if !ok {
            report.mismatch(|| format!("case {case}: {name}[{i}]: got {g:e}, expected {e:e}"));
        }
    }
}

fn compare_ints(report: &mut VectorReport, case: &str, name: &str, got: &[u64], exp: &[i64]) {
    for (i, (&g, &e)) in got.iter().zip(exp).enumerate() {
        report.checked += 1;
        if i64::try_from(g).ok() != Some(e) {
            report.mismatch(|| format!("case {case}: {name}[{i}]: got {g}, expected {e}"));
        }
    }
}

/// Checks one `engram-forward-v1` safetensors file. Errors are for unreadable or malformed
/// files; numeric disagreements are mismatches in the report.
pub fn check_forward_file(path: &Path) -> Result<VectorReport> {
    let (cfg, t) = load(path)?;
    let case = cfg
        .case
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    let mut report = VectorReport {
        unit: "values",
        cases: 1,
        ..VectorReport::default()
    };
    let (b, s) = (cfg.batch, cfg.seq_len);
    let (d, m, dm) = (cfg.hidden_size, cfg.hc_mult, cfg.d_mem);
    let tokens = b * s;
    let heads = (cfg.max_ngram.saturating_sub(1)) * cfg.n_head_per_ngram;
    ensure!(
        heads * cfg.head_dim == dm,
        "{case}: d_mem {dm} != heads {heads} * head_dim {}",
        cfg.head_dim
    );

    // Hashing from the compressed ids.
    let config = EngramConfig {
        max_ngram: cfg.max_ngram,
        n_heads: cfg.n_head_per_ngram,
        base_sizes: cfg.base_sizes.clone(),
        layer_ids: cfg.layer_ids.clone(),
        seed: cfg.hash_seed,
        pad_id: cfg.pad_id,
    };
    let layout = EngramLayout::new(&config, cfg.compressed_vocab_size, cfg.compressed_pad_id)
        .with_context(|| format!("{case}: layout"))?;
    let li = layout.layer_index(cfg.layer_id)?;
    let hasher = NgramHasher::new(&layout, HashOptions::default())?;
    let compressed = t.i64s("input.compressed_ids", tokens)?;
    let mut idx = vec![0u64; tokens * heads];
    hasher.hash_into(li, compressed, b, s, HashOutput::HeadIndex, &mut idx)?;
    compare_ints(
        &mut report,
        &case,
        "input.head_indices",
        &idx,
        t.i64s("input.head_indices", tokens * heads)?,
    );
    hasher.hash_into(li, compressed, b, s, HashOutput::RowId, &mut idx)?;
    let row_ids_file = t.i64s("input.row_ids", tokens * heads)?;
    compare_ints(&mut report, &case, "input.row_ids", &idx, row_ids_file);

    // Gather e from the file's row ids (exact).
    let total_rows = layout.layers[li].total_rows as usize;
    let table = t.f32s(
        "multi_head_embedding.embedding.weight",
        total_rows * cfg.head_dim,
    )?;
    let table_bytes: Vec<u8> = table.iter().flat_map(|x| x.to_le_bytes()).collect();
    let ids = row_ids_from_i64(row_ids_file)?;
    let mut e = vec![0f32; tokens * dm];
    gather_rows(RowLayout::F32, cfg.head_dim, &table_bytes, &ids, &mut e)
        .with_context(|| format!("{case}: gathering e"))?;
    compare_floats(
        &mut report,
        &case,
        "expected.e",
        &e,
        t.f32s("expected.e", tokens * dm)?,
        true,
    );

    // The module forward.
    let per = |fmt: &str| -> Result<Vec<Vec<f32>>> {
        (0..m)
            .map(|i| Ok(t.f32s(&fmt.replace("{m}", &i.to_string()), d)?.to_vec()))
            .collect()
    };
    let per_w = |fmt: &str| -> Result<Vec<Vec<f32>>> {
        (0..m)
            .map(|i| {
                Ok(t.f32s(&fmt.replace("{m}", &i.to_string()), d * dm)?
                    .to_vec())
            })
            .collect()
    };
    let weights = EngramModuleWeights {
        value_proj_w: t.f32s("value_proj.weight", d * dm)?.to_vec(),
        value_proj_b: t.f32s("value_proj.bias", d)?.to_vec(),
        key_proj_w: per_w("key_projs.{m}.weight")?,
        key_proj_b: per("key_projs.{m}.bias")?,
        norm1: per("norm1.{m}.weight")?,
        norm2: per("norm2.{m}.weight")?,
        conv_norm: if cfg.kernel_size == 0 {
            Vec::new()
        } else {
            per("short_conv.norms.{m}.weight")?
        },
        conv_w: if cfg.kernel_size == 0 {
            Vec::new()
        } else {
            t.f32s("short_conv.conv.weight", m * d * cfg.kernel_size)?
                .to_vec()
        },
    };
    let mut mcfg = EngramModuleConfig::new(d, m, dm, cfg.max_ngram);
    mcfg.kernel_size = cfg.kernel_size;
    if cfg.kernel_size > 0 {
        mcfg.dilation = cfg.conv_dilation;
    }
    mcfg.key_norm_eps = cfg.key_norm_eps as f32;
    mcfg.conv_norm_eps = cfg.conv_norm_eps as f32;
    let module = EngramModule::new(mcfg, weights).with_context(|| format!("{case}: module"))?;
    let hidden = t.f32s("input.hidden_states", tokens * m * d)?;
    let tr = module.forward_prefill_traced(&e, hidden, b, s)?;
    let bt = tokens;
    let btm = tokens * m;
    let btmd = tokens * m * d;
    for (name, got, numel) in [
        ("expected.v", &tr.v, bt * d),
        ("expected.k", &tr.k, btmd),
        ("expected.k_normed", &tr.k_normed, btmd),
        ("expected.q_normed", &tr.q_normed, btmd),
        ("expected.s", &tr.s, btm),
        ("expected.gate_logit", &tr.gate_logit, btm),
        ("expected.alpha", &tr.alpha, btm),
        ("expected.u", &tr.u, btmd),
        ("expected.conv_in_normed", &tr.conv_in_normed, btmd),
        ("expected.conv_pre_act", &tr.conv_pre_act, btmd),
        ("expected.conv_out", &tr.conv_out, btmd),
        ("expected.y", &tr.y, btmd),
    ] {
        let exp = t.f32s(name, numel)?;
        compare_floats(&mut report, &case, name, got, exp, false);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_forward_vectors_match() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/conformance");
        for c in ["a", "b", "c"] {
            let path = dir.join(format!("engram-forward-v1-{c}.safetensors"));
            let report = check_forward_file(&path).expect("readable");
            assert_eq!(report.mismatch_count, 0, "{:?}", report.mismatches);
            assert!(report.checked > 1000);
            assert!(report.summary().ends_with("all match"));
        }
    }

    /// A case without the short convolution, derived from committed case a: its config
    /// without `kernel_size` / `conv_dilation`, no `short_conv.*` tensors, and the module's
    /// definition for the expectations (conv intermediates zero, `y = u`). The fast
    /// module must reproduce it; a `y` that still carries the convolution must not pass.
    #[test]
    fn a_case_without_the_short_convolution_matches() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/conformance");
        let bytes = std::fs::read(dir.join("engram-forward-v1-a.safetensors")).expect("reads");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors");
        let mut meta = meta.metadata().clone().expect("metadata");
        let mut config: serde_json::Value =
            serde_json::from_str(&meta["config"]).expect("config json");
        let c = config.as_object_mut().expect("object");
        c.remove("kernel_size");
        c.remove("conv_dilation");
        meta.insert("config".into(), config.to_string());
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
        let u = st.tensor("expected.u").expect("u").data().to_vec();
        for (name, view) in st.tensors() {
            if name.starts_with("short_conv.") {
                continue;
            }
            let data = match name.as_str() {
                "expected.y" => u.clone(),
                "expected.conv_in_normed" | "expected.conv_pre_act" | "expected.conv_out" => {
                    vec![0u8; view.data().len()]
                }
                _ => view.data().to_vec(),
            };
            tensors.push((name, view.shape().to_vec(), view.dtype(), data));
        }
        let write = |path: &Path, tensors: &[(String, Vec<usize>, Dtype, Vec<u8>)]| {
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|(n, s, d, b)| {
                    let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view");
                    (n.clone(), v)
                })
                .collect();
            safetensors::serialize_to_file(views, Some(meta.clone()), path).expect("writes");
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("no-conv.safetensors");
        write(&p, &tensors);
        let report = check_forward_file(&p).expect("readable");
        assert_eq!(report.mismatch_count, 0, "{:?}", report.mismatches);
        assert!(report.checked > 1000);
        // The original y (with the convolution's term) is a mismatch here.
        let y = st.tensor("expected.y").expect("y").data().to_vec();
        for t in tensors.iter_mut().filter(|t| t.0 == "expected.y") {
            t.3 = y.clone();
        }
        write(&p, &tensors);
        let report = check_forward_file(&p).expect("readable");
        assert!(
            report.mismatch_count > 0,
            "the convolution's term went unnoticed"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("engram-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let p = dir.join("bad.safetensors");
        std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{\"a\":1}").expect("write");
        assert!(check_forward_file(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
