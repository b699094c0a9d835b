//! Loading `engram-forward-v1` conformance files for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;

use engram_kernels::{EngramModuleConfig, EngramModuleWeights};
use safetensors::{Dtype, SafeTensors};

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/conformance")
}

pub fn forward_files() -> Vec<PathBuf> {
    ["a", "b", "c"]
        .iter()
        .map(|c| data_dir().join(format!("engram-forward-v1-{c}.safetensors")))
        .collect()
}

#[derive(Debug)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub config: serde_json::Value,
    pub tensors: HashMap<String, (Vec<usize>, Data)>,
}

impl Case {
    pub fn load(path: &std::path::Path) -> Case {
        let bytes = std::fs::read(path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let config: serde_json::Value = serde_json::from_str(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("config"))
                .expect("config metadata"),
        )
        .unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
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
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Case {
            name: config["case"].as_str().unwrap_or("?").to_string(),
            config,
            tensors,
        }
    }

    pub fn f32s(&self, name: &str) -> &[f32] {
        match &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .1
        {
            Data::F32(v) => v,
            Data::I64(_) => panic!("{name} is not f32"),
        }
    }

    pub fn i64s(&self, name: &str) -> &[i64] {
        match &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .1
        {
            Data::I64(v) => v,
            Data::F32(_) => panic!("{name} is not i64"),
        }
    }

    pub fn usize(&self, key: &str) -> usize {
        self.config[key]
            .as_u64()
            .unwrap_or_else(|| panic!("config {key}")) as usize
    }

    pub fn batch_seq(&self) -> (usize, usize) {
        (self.usize("batch"), self.usize("seq_len"))
    }

    pub fn module(&self) -> (EngramModuleConfig, EngramModuleWeights) {
        let m = self.usize("hc_mult");
        let mut cfg = EngramModuleConfig::new(
            self.usize("hidden_size"),
            m,
            self.usize("d_mem"),
            self.usize("max_ngram"),
        );
        cfg.kernel_size = self.usize("kernel_size");
        cfg.dilation = self.usize("conv_dilation");
        cfg.key_norm_eps = self.config["key_norm_eps"].as_f64().unwrap() as f32;
        cfg.conv_norm_eps = self.config["conv_norm_eps"].as_f64().unwrap() as f32;
        let per = |fmt: &str| -> Vec<Vec<f32>> {
            (0..m)
                .map(|b| self.f32s(&fmt.replace("{m}", &b.to_string())).to_vec())
                .collect()
        };
        let w = EngramModuleWeights {
            value_proj_w: self.f32s("value_proj.weight").to_vec(),
            value_proj_b: self.f32s("value_proj.bias").to_vec(),
            key_proj_w: per("key_projs.{m}.weight"),
            key_proj_b: per("key_projs.{m}.bias"),
            norm1: per("norm1.{m}.weight"),
            norm2: per("norm2.{m}.weight"),
            conv_norm: per("short_conv.norms.{m}.weight"),
            conv_w: self.f32s("short_conv.conv.weight").to_vec(),
        };
        (cfg, w)
    }
}

/// Worst `|got - exp| / (1 + |exp|)`; panics naming the first element over `tol`.
pub fn assert_close(what: &str, got: &[f32], exp: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), exp.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&g, &e)) in got.iter().zip(exp).enumerate() {
        let err = (f64::from(g) - f64::from(e)).abs() / (1.0 + f64::from(e).abs());
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, expected {e} (measure {err:.3e} > {tol:.0e})"
        );
        worst = worst.max(err);
    }
    worst
}

pub const TOL: f64 = 1e-5;
