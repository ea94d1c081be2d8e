//! Per-dimension rescale factors `lambda_i` (LongRoPE, arXiv 2402.13753 Eq. 2: `theta'_i = theta_i / lambda_i`)
//! and the files that carry them:
//! - LongRoPE's CSV (microsoft/LongRoPE, read with `np.loadtxt(delimiter=',')`): `d/2` values, one per line
//!   (or all on one line), or one line per layer with `d/2` comma-separated values (`layers x d/2`);
//! - HF `config.json`: the `rope_scaling` block of `rope_type = "longrope"` (`short_factor`, `long_factor`,
//!   `original_max_position_embeddings`, `attention_factor`), which HF transformers and vLLM run unchanged.
//!
//! [`factors_of`] turns the tables of any method into factors, so PI, NTK, YaRN ... can seed a LongRoPE search
//! or be exported as a `longrope` block ([`hf_rope_scaling`]); the `longrope` plugin reads such a block back
//! (`longrope_core::scaling::hf::read_hf_config`).

use std::fmt::Write as _;
use std::path::Path;

use longrope_core::{PositionScaling, RopeShape};
pub use longrope_core::scaling::hf::{factors_of, hf_config_update, hf_rope_scaling};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::{Result, ScalingError};

/// Rescale factors: one row of `d/2` values shared by every layer, or one row per layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a list of head_dim/2 numbers, or a list of num_layers lists of head_dim/2 numbers")]
pub enum FactorTable {
    /// `d/2` factors used by every layer.
    Shared(Vec<f64>),
    /// `num_layers` rows of `d/2` factors.
    PerLayer(Vec<Vec<f64>>),
}

impl FactorTable {
    /// Whether the factors differ per layer.
    pub fn is_per_layer(&self) -> bool {
        matches!(self, FactorTable::PerLayer(_))
    }

    /// The factors of layer `layer` (the shared row for every layer when not per-layer). `None` when a
    /// per-layer table has no such row.
    pub fn row(&self, layer: usize) -> Option<&[f64]> {
        match self {
            FactorTable::Shared(v) => Some(v),
            FactorTable::PerLayer(rows) => rows.get(layer).map(Vec::as_slice),
        }
    }

    /// Check every value alone, without a shape: finite, `>= min`, `<= MAX_SCALE`. `field` names the table.
    pub fn check_values(&self, field: &str, min: f64) -> Result<()> {
        let check_row = |name: String, row: &[f64]| -> Result<()> {
            for (i, v) in row.iter().enumerate() {
                checks::at_least(&format!("{name}[{i}]"), *v, min, "LongRoPE factors are >= 1 (theta_i / lambda_i never raises a frequency)")?;
                checks::at_most(&format!("{name}[{i}]"), *v, longrope_core::limits::MAX_SCALE, "larger factors underflow the model's f32 frequencies to 0")?;
            }
            Ok(())
        };
        match self {
            FactorTable::Shared(v) => check_row(field.to_string(), v),
            FactorTable::PerLayer(rows) => rows.iter().enumerate().try_for_each(|(l, row)| check_row(format!("{field}[layer {l}]"), row)),
        }
    }

    /// Check the table: rows of `half = d/2` values, `num_layers` rows when per-layer, every value finite and
    /// `>= min`. `field` names the table in errors (`longrope.factors`, a file path).
    pub fn validate(&self, field: &str, half: usize, num_layers: usize, min: f64) -> Result<()> {
        let check_row = |name: String, row: &[f64]| -> Result<()> {
            if row.len() != half {
                return Err(ScalingError::WrongCount {
                    field: name,
                    expected: half,
                    got: row.len(),
                    unit: "factors (head_dim/2)".into(),
                });
            }
            for (i, v) in row.iter().enumerate() {
                checks::at_least(
                    &format!("{name}[{i}]"),
                    *v,
                    min,
                    "LongRoPE factors are >= 1 (theta_i / lambda_i never raises a frequency)",
                )?;
                checks::at_most(
                    &format!("{name}[{i}]"),
                    *v,
                    longrope_core::limits::MAX_SCALE,
                    "larger factors underflow the model's f32 frequencies to 0",
                )?;
            }
            Ok(())
        };
        match self {
            FactorTable::Shared(v) => check_row(field.to_string(), v),
            FactorTable::PerLayer(rows) => {
                if rows.len() != num_layers {
                    return Err(ScalingError::WrongCount {
                        field: field.to_string(),
                        expected: num_layers,
                        got: rows.len(),
                        unit: "rows (one per layer)".into(),
                    });
                }
                rows.iter().enumerate().try_for_each(|(l, row)| check_row(format!("{field}[layer {l}]"), row))
            }
        }
    }
}

/// Parse LongRoPE's CSV text. `origin` names the source in errors. Blank lines and lines starting with `#`
/// are skipped. One value per line, or a single line, gives [`FactorTable::Shared`]; several lines of several
/// values give [`FactorTable::PerLayer`] (all rows must have the same length).
pub fn parse_csv(text: &str, origin: &Path) -> Result<FactorTable> {
    let mut rows: Vec<(usize, Vec<f64>)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut row = Vec::new();
        for (col, cell) in line.split(',').enumerate() {
            let cell = cell.trim();
            let v: f64 = cell.parse().map_err(|_| ScalingError::Csv {
                path: origin.to_path_buf(),
                line: n + 1,
                message: format!("column {}: `{cell}` is not a number", col + 1),
            })?;
            if !v.is_finite() {
                return Err(ScalingError::Csv {
                    path: origin.to_path_buf(),
                    line: n + 1,
                    message: format!("column {}: {v} is not finite", col + 1),
                });
            }
            row.push(v);
        }
        rows.push((n + 1, row));
    }
    if rows.is_empty() {
        return Err(ScalingError::Csv {
            path: origin.to_path_buf(),
            line: 0,
            message: "no factors in the file".into(),
        });
    }
    if rows.len() == 1 {
        return Ok(FactorTable::Shared(rows.remove(0).1));
    }
    if rows.iter().all(|(_, r)| r.len() == 1) {
        return Ok(FactorTable::Shared(rows.into_iter().map(|(_, r)| r[0]).collect()));
    }
    let width = rows[0].1.len();
    if let Some((line, r)) = rows.iter().find(|(_, r)| r.len() != width) {
        return Err(ScalingError::Csv {
            path: origin.to_path_buf(),
            line: *line,
            message: format!(
                "{} values, but the first row has {width} (a per-layer file is layers x head_dim/2)",
                r.len()
            ),
        });
    }
    Ok(FactorTable::PerLayer(rows.into_iter().map(|(_, r)| r).collect()))
}

/// Read a LongRoPE factor CSV.
pub fn read_csv(path: &Path) -> Result<FactorTable> {
    let text = longrope_core::files::read_text(path, longrope_core::files::MAX_CONFIG_BYTES)?;
    parse_csv(&text, path)
}

/// LongRoPE's CSV text of a table: one value per line when shared, one comma-separated row per layer when
/// per-layer. Values are written in Rust's shortest round-trip form, so reading gives back the same bits.
pub fn to_csv(table: &FactorTable) -> String {
    let mut out = String::new();
    match table {
        FactorTable::Shared(v) => v.iter().for_each(|x| {
            let _ = writeln!(out, "{x:?}");
        }),
        FactorTable::PerLayer(rows) => rows.iter().for_each(|r| {
            let cells: Vec<String> = r.iter().map(|x| format!("{x:?}")).collect();
            let _ = writeln!(out, "{}", cells.join(","));
        }),
    }
    out
}

/// Write a LongRoPE factor CSV.
pub fn write_csv(path: &Path, table: &FactorTable) -> Result<()> {
    Ok(longrope_core::files::write_atomic(path, to_csv(table).as_bytes())?)
}

/// The factor table of a built method for a shape at sequence length `seq_len`: per-layer when the method is.
pub fn method_factors(method: &dyn PositionScaling, shape: &RopeShape, seq_len: usize) -> Result<FactorTable> {
    if method.per_layer() {
        let rows = (0..shape.num_layers)
            .map(|l| method.tables(&shape.at(seq_len, l)).map(|t| factors_of(&t, shape)))
            .collect::<longrope_core::Result<Vec<_>>>()?;
        Ok(FactorTable::PerLayer(rows))
    } else {
        Ok(FactorTable::Shared(factors_of(&method.tables(&shape.at(seq_len, 0))?, shape)))
    }
}
