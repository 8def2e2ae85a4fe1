//! The data set's codes and how to pick them: uniform, or Zipf (a few links go viral).

use rand::Rng;
use std::path::Path;

/// Codes of the data set with the status a redirect must answer (302 active, 404 inactive).
pub struct Codes {
    pub codes: Vec<(String, u16)>,
    /// Cumulative Zipf weights, when the scenario asks for Zipf.
    cdf: Option<Vec<f64>>,
}

impl Codes {
    /// Reads `urls.csv` (the seed format `kurz-api sample` writes).
    pub fn from_csv(path: &Path, zipf: Option<f64>) -> Result<Self, String> {
        let mut reader =
            csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let headers = reader.headers().map_err(|e| e.to_string())?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or(format!("urls.csv lacks {name}"))
        };
        let (code_col, active_col) = (col("short_code")?, col("is_active")?);
        let mut codes = Vec::new();
        for rec in reader.records() {
            let rec = rec.map_err(|e| e.to_string())?;
            let active = rec
                .get(active_col)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            codes.push((
                rec.get(code_col).unwrap_or_default().to_owned(),
                if active { 302 } else { 404 },
            ));
        }
        if codes.is_empty() {
            return Err("urls.csv has no links".into());
        }
        let cdf = zipf.map(|s| {
            let mut acc = 0.0;
            codes
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    acc += 1.0 / ((i + 1) as f64).powf(s);
                    acc
                })
                .collect()
        });
        Ok(Self { codes, cdf })
    }

    /// A code and its expected status.
    pub fn pick(&self, rng: &mut impl Rng) -> &(String, u16) {
        &self.codes[self.pick_index(rng)]
    }

    /// Where in [`Self::codes`] the next pick is.
    pub fn pick_index(&self, rng: &mut impl Rng) -> usize {
        match &self.cdf {
            Some(cdf) => {
                let x = rng.random::<f64>() * cdf[cdf.len() - 1];
                cdf.partition_point(|c| *c < x).min(cdf.len() - 1)
            }
            None => rng.random_range(0..self.codes.len()),
        }
    }
}
