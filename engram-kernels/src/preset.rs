//! The published shapes, by name: the one table of what `--preset demo|engram27b|v41`
//! means (addressing config and row format), shared by the store's synthetic tables and
//! every tool.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::layout::EngramConfig;
use crate::quant::RowLayout;

/// A published Engram shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The official demo: orders 2-3, 8 heads, base 646,400, layers 1 and 15; 64 x bf16 rows.
    Demo,
    /// The paper's Engram-27B: orders 2-3, 8 heads, base 2,262,400, layers 2 and 15;
    /// 80 x bf16 rows.
    Engram27b,
    /// DeepSeek-V4.1-Flash as reported: orders 2-4, 8 heads, base 16,000,000, layers 1 and
    /// 14; 256 x FP8 E4M3 + 8 E8M0 scales.
    V41,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [Preset; 3] = [Preset::Demo, Preset::Engram27b, Preset::V41];

    /// The preset's name, as `--preset` and build configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Demo => "demo",
            Preset::Engram27b => "engram27b",
            Preset::V41 => "v41",
        }
    }

    /// One line for `--help`.
    pub fn description(self) -> &'static str {
        match self {
            Preset::Demo => {
                "the official demo: orders 2-3, 8 heads, layers 1 and 15, 64 x bf16 rows"
            }
            Preset::Engram27b => {
                "the paper's Engram-27B: orders 2-3, 8 heads, layers 2 and 15, 80 x bf16 rows"
            }
            Preset::V41 => {
                "DeepSeek-V4.1-Flash: orders 2-4, 8 heads, layers 1 and 14, 256 x FP8 + 8 E8M0"
            }
        }
    }

    /// The preset's addressing config.
    pub fn config(self) -> EngramConfig {
        match self {
            Preset::Demo => EngramConfig::demo(),
            Preset::Engram27b => EngramConfig::engram27b(),
            Preset::V41 => EngramConfig::v41(),
        }
    }

    /// The preset's row layout and values per row: demo 64 x bf16 (128 B), Engram-27B
    /// 80 x bf16 (160 B), V4.1 256 x FP8 E4M3 + 8 E8M0 scales (264 B).
    pub fn row_format(self) -> (RowLayout, u32) {
        match self {
            Preset::Demo => (RowLayout::Bf16, 64),
            Preset::Engram27b => (RowLayout::Bf16, 80),
            Preset::V41 => (RowLayout::V41, 256),
        }
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| Error::InvalidConfig {
                field: "preset",
                value: format!("{s:?}"),
                reason: "expected demo, engram27b or v41",
            })
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rows_fit() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().ok(), Some(p));
            let (layout, dim) = p.row_format();
            assert!(layout.row_bytes(dim as usize).is_ok(), "{p:?}");
        }
        assert_eq!(Preset::V41.row_format().0.row_bytes(256).ok(), Some(264));
        assert!("v4".parse::<Preset>().is_err());
    }
}
