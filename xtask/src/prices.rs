//! `cargo xtask fit-prices` and `cargo xtask spot-advisor`: the offline price data of
//! `spot-core` (`spot-core/src/price.rs`).
//!
//! - `fit-prices` fits the coefficients of `spot_core::price::EstimateModel` in log space by
//!   ordinary least squares (normal equations with a small ridge term, solved by Cholesky)
//!   against the us-east-1 on-demand price list in `../shared/data/` (read in place, never
//!   copied into the repository) and writes them, with the fit's error figures, to
//!   `spot-core/data/price-model.json`.
//! - `spot-advisor` writes a synthetic, seeded Spot Instance Advisor file.
//!
//! Both use `spot-core` itself (the embedded catalog, `EstimateModel::features`,
//! `SpotAdvisor::generate`), so the data and the code that reads it cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use spot_core::catalog::Catalog;
use spot_core::price::{CsvPrices, EstimateModel, SpotAdvisor};

use crate::catalog::repo_root;

/// Arguments of `cargo xtask fit-prices`.
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    /// On-demand price list, `instance_type,usd_per_hour` (relative paths from the repo root).
    #[arg(long, default_value = "../shared/data/ondemand-us-east-1.csv")]
    pub prices: PathBuf,
    /// Where to write the model.
    #[arg(long, default_value = "spot-core/data/price-model.json")]
    pub out: PathBuf,
    /// Ridge penalty added to the diagonal of the normal equations (not to the intercept).
    #[arg(long, default_value_t = 1e-3)]
    pub ridge: f64,
    /// Minimum number of priced types a feature must be non-zero for to be kept.
    #[arg(long, default_value_t = 3)]
    pub min_support: usize,
}

/// Arguments of `cargo xtask spot-advisor`.
#[derive(Debug, Clone, clap::Args)]
pub struct SpotArgs {
    /// Seed of the generator: the same seed always gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file (Spot Instance Advisor JSON schema).
    #[arg(long)]
    pub out: PathBuf,
}

fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        repo_root().join(path)
    }
}

/// Solves `a x = b` for a symmetric positive-definite `a` (Cholesky).
fn solve_spd(mut a: Vec<Vec<f64>>, b: &[f64]) -> Result<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let d = a[j][j] - a[j][..j].iter().map(|v| v * v).sum::<f64>();
        ensure!(d > 1e-12, "normal equations are singular at column {j}");
        let d = d.sqrt();
        a[j][j] = d;
        for i in j + 1..n {
            let s = a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>();
            a[i][j] = s / d;
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| a[i][k] * y[k]).sum();
        y[i] = (b[i] - s) / a[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[k][i] * x[k]).sum();
        x[i] = (y[i] - s) / a[i][i];
    }
    Ok(x)
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

type Row = (Vec<(String, f64)>, f64);

/// Fits `ln(price) = sum(coefficient * feature)` by least squares with a ridge term; keeps the
/// features non-zero on at least `min_support` rows. Coefficients are rounded to 1e-6.
fn fit(rows: &[Row], ridge: f64, min_support: usize) -> Result<BTreeMap<String, f64>> {
    let mut support: BTreeMap<&str, usize> = BTreeMap::new();
    for (f, _) in rows {
        for (name, value) in f {
            if *value != 0.0 {
                *support.entry(name.as_str()).or_default() += 1;
            }
        }
    }
    let names: Vec<String> = support
        .iter()
        .filter(|(name, n)| **name == "intercept" || **n >= min_support)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let column: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let k = names.len();
    let mut xtx = vec![vec![0.0; k]; k];
    let mut xty = vec![0.0; k];
    for (f, price) in rows {
        let x: Vec<(usize, f64)> = f
            .iter()
            .filter_map(|(n, v)| column.get(n.as_str()).map(|&i| (i, *v)))
            .collect();
        let y = price.ln();
        for &(i, vi) in &x {
            xty[i] += vi * y;
            for &(j, vj) in &x {
                xtx[i][j] += vi * vj;
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        if name != "intercept" {
            xtx[i][i] += ridge;
        }
    }
    let beta = solve_spd(xtx, &xty)?;
    Ok(names.into_iter().zip(beta.iter().map(|b| round6(*b))).collect())
}

/// Absolute percentage error of the model on one row.
fn ape((f, price): &Row, coefficients: &BTreeMap<String, f64>) -> f64 {
    let ln: f64 = f
        .iter()
        .filter_map(|(n, v)| coefficients.get(n).map(|c| c * v))
        .sum();
    ((ln.exp() - price) / price).abs() * 100.0
}

/// Median and 90th percentile of the absolute percentage error over the rows.
fn ape_quantiles(rows: &[Row], coefficients: &BTreeMap<String, f64>) -> (f64, f64) {
    let mut apes: Vec<f64> = rows.iter().map(|r| ape(r, coefficients)).collect();
    apes.sort_by(f64::total_cmp);
    (quantile(&apes, 0.5), quantile(&apes, 0.9))
}

/// Runs `cargo xtask fit-prices`.
pub fn run_fit(args: &FitArgs) -> Result<()> {
    let catalog = Catalog::embedded();
    let prices_path = resolve(&args.prices);
    let prices = CsvPrices::from_path(&prices_path)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut skipped = Vec::new();
    for (name, price) in prices.iter() {
        match catalog.get(name) {
            Ok(t) => rows.push((EstimateModel::features(t), price)),
            Err(_) => skipped.push(name.to_owned()),
        }
    }
    ensure!(
        rows.len() > 50,
        "only {} priced types are in the catalog",
        rows.len()
    );

    let coefficients = fit(&rows, args.ridge, args.min_support)?;
    let (median, p90) = ape_quantiles(&rows, &coefficients);
    // 5-fold cross-validation (fold = row index mod 5): the error on types the fit has not seen.
    let mut held_out = Vec::new();
    for fold in 0..5 {
        let train: Vec<_> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 5 != fold)
            .map(|(_, r)| r.clone())
            .collect();
        let c = fit(&train, args.ridge, args.min_support)?;
        held_out.extend(
            rows.iter()
                .enumerate()
                .filter(|(i, _)| i % 5 == fold)
                .map(|(_, r)| ape(r, &c)),
        );
    }
    held_out.sort_by(f64::total_cmp);
    let (cv_median, cv_p90) = (quantile(&held_out, 0.5), quantile(&held_out, 0.9));
    let k = coefficients.len();
    let source = prices_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model = json!({
        "description": "Log-linear on-demand price estimate: ln(usd_per_hour) = sum(coefficient * feature). \
            Features are listed in spot-core/src/price.rs (EstimateModel::features). \
            Generated by `cargo xtask fit-prices`; do not edit.",
        "region": "us-east-1",
        "fitted_on": source,
        "rows": rows.len(),
        "skipped_not_in_catalog": skipped.len(),
        "ridge": args.ridge,
        "min_support": args.min_support,
        "median_ape_percent": (median * 100.0).round() / 100.0,
        "p90_ape_percent": (p90 * 100.0).round() / 100.0,
        "cross_validated_median_ape_percent": (cv_median * 100.0).round() / 100.0,
        "cross_validated_p90_ape_percent": (cv_p90 * 100.0).round() / 100.0,
        "coefficients": coefficients,
    });
    let out = resolve(&args.out);
    let text = serde_json::to_string_pretty(&model)? + "\n";
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "fitted {k} coefficients on {} types ({} priced types not in the catalog): \
         median APE {median:.2}%, p90 APE {p90:.2}% (5-fold cross-validated: median {cv_median:.2}%, \
         p90 {cv_p90:.2}%); wrote {} ({} bytes)",
        rows.len(),
        skipped.len(),
        out.display(),
        text.len()
    );
    Ok(())
}

/// Runs `cargo xtask spot-advisor`.
pub fn run_spot(args: &SpotArgs) -> Result<()> {
    let advisor = SpotAdvisor::generate(Catalog::embedded(), args.seed);
    let text = advisor.to_json()?;
    let out = resolve(&args.out);
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    let entries: usize = advisor
        .spot_advisor
        .values()
        .map(|r| r.values().map(|os| os.len()).sum::<usize>())
        .sum();
    println!(
        "wrote {} ({} bytes, {entries} entries, seed {})",
        out.display(),
        text.len(),
        args.seed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves() {
        let a = vec![vec![4.0, 2.0], vec![2.0, 3.0]];
        let x = solve_spd(a, &[2.0, 5.0]).unwrap();
        assert!((x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12, "{x:?}");
        assert!(solve_spd(vec![vec![0.0]], &[1.0]).is_err());
    }

    #[test]
    fn quantiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(quantile(&v, 0.5), 5.0);
        assert_eq!(quantile(&v, 0.9), 9.0);
    }
}
