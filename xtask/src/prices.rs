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
//! The feature extraction and the spot generator are mirrored in `spot-core/src/price.rs`;
//! the tests of both files pin the same figures, so keep them in step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::catalog::repo_root;

/// Arguments of `cargo xtask fit-prices`.
#[derive(Debug, Clone, clap::Args)]
pub struct FitArgs {
    /// On-demand price list, `instance_type,usd_per_hour` (relative paths from the repo root).
    #[arg(long, default_value = "../shared/data/ondemand-us-east-1.csv")]
    pub prices: PathBuf,
    /// The catalog's instance types.
    #[arg(long, default_value = "spot-core/data/types.csv")]
    pub types: PathBuf,
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
    /// The catalog's instance types.
    #[arg(long, default_value = "spot-core/data/types.csv")]
    pub types: PathBuf,
    /// The catalog's zonal offerings.
    #[arg(long, default_value = "spot-core/data/zones.txt")]
    pub zones: PathBuf,
}

fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        repo_root().join(path)
    }
}

/// The fields of one `types.csv` line the price code needs.
#[derive(Debug, Clone)]
struct TypeRow {
    name: String,
    family: String,
    category: String,
    generation: u32,
    arm64_first: bool,
    cpu_manufacturer: String,
    vcpus: u32,
    memory_mib: u64,
    gpus: u32,
    gpu_memory_mib: u64,
    gpu_manufacturer: String,
    gpu_model: String,
    burstable: bool,
    bare_metal: bool,
    network_gbps: f64,
    instance_storage_gb: u64,
    spot: bool,
}

fn read_types(path: &Path) -> Result<Vec<TypeRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("types.csv is empty")?.split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no column {name}"))
    };
    let c = [
        col("name")?,
        col("architectures")?,
        col("cpu_manufacturer")?,
        col("vcpus")?,
        col("memory_mib")?,
        col("gpus")?,
        col("gpu_memory_mib")?,
        col("gpu_manufacturer")?,
        col("gpu_model")?,
        col("burstable")?,
        col("bare_metal")?,
        col("network_gbps")?,
        col("instance_storage_gb")?,
        col("usage_classes")?,
    ];
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        ensure!(
            f.len() == header.len(),
            "types.csv line {}: {} fields",
            n + 2,
            f.len()
        );
        let ctx = || format!("types.csv line {}", n + 2);
        let name = f[c[0]].to_owned();
        let (family, _) = name.split_once('.').with_context(ctx)?;
        let category: String = family.chars().take_while(|ch| ch.is_ascii_lowercase()).collect();
        let digits: String = family[category.len()..]
            .chars()
            .take_while(|ch| ch.is_ascii_digit())
            .collect();
        rows.push(TypeRow {
            family: family.to_owned(),
            generation: digits.parse().unwrap_or(0),
            category,
            arm64_first: f[c[1]].split('|').next() == Some("arm64"),
            cpu_manufacturer: f[c[2]].to_owned(),
            vcpus: f[c[3]].parse().with_context(ctx)?,
            memory_mib: f[c[4]].parse().with_context(ctx)?,
            gpus: f[c[5]].parse().with_context(ctx)?,
            gpu_memory_mib: f[c[6]].parse().with_context(ctx)?,
            gpu_manufacturer: f[c[7]].to_owned(),
            gpu_model: f[c[8]].to_owned(),
            burstable: f[c[9]] == "1",
            bare_metal: f[c[10]] == "1",
            network_gbps: f[c[11]].parse().with_context(ctx)?,
            instance_storage_gb: f[c[12]].parse().with_context(ctx)?,
            spot: f[c[13]].split('|').any(|u| u == "spot"),
            name,
        });
    }
    Ok(rows)
}

/// The regression features of an instance type; mirrors `EstimateModel::features` in
/// `spot-core/src/price.rs`.
fn features(t: &TypeRow) -> Vec<(String, f64)> {
    let mut f = vec![
        ("intercept".to_owned(), 1.0),
        ("ln_vcpus".to_owned(), f64::from(t.vcpus.max(1)).ln()),
        (
            "ln_memory_gib".to_owned(),
            (t.memory_mib as f64 / 1024.0).max(0.25).ln(),
        ),
        (
            "ln1p_storage_gb".to_owned(),
            (t.instance_storage_gb as f64).ln_1p(),
        ),
        ("ln1p_network_gbps".to_owned(), t.network_gbps.max(0.0).ln_1p()),
        (format!("category:{}", t.category), 1.0),
        (format!("family:{}", t.family), 1.0),
        ("generation".to_owned(), f64::from(t.generation.min(10))),
    ];
    if t.gpus > 0 {
        f.push((
            format!("gpu:{} {}", t.gpu_manufacturer, t.gpu_model),
            f64::from(t.gpus).ln_1p(),
        ));
        f.push((
            "ln1p_gpu_memory_gib".to_owned(),
            (t.gpu_memory_mib as f64 / 1024.0).ln_1p(),
        ));
    }
    let rest = t.family[t.category.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    let mut parts = rest.split('-');
    for letter in parts.next().unwrap_or("").chars() {
        f.push((format!("suffix:{letter}"), 1.0));
    }
    for part in parts {
        f.push((format!("suffix:{part}"), 1.0));
    }
    if t.arm64_first {
        f.push(("arch:arm64".to_owned(), 1.0));
    }
    if t.cpu_manufacturer == "AMD" {
        f.push(("cpu:amd".to_owned(), 1.0));
    }
    if t.bare_metal {
        f.push(("metal".to_owned(), 1.0));
    }
    if t.burstable {
        f.push(("burstable".to_owned(), 1.0));
    }
    f
}

fn read_prices(path: &Path) -> Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.eq_ignore_ascii_case("instance_type,usd_per_hour")) {
            continue;
        }
        let Some((name, price)) = line.split_once(',') else {
            bail!(
                "{} line {}: expected instance_type,usd_per_hour",
                path.display(),
                n + 1
            );
        };
        let price: f64 = price
            .trim()
            .parse()
            .with_context(|| format!("{} line {}: price {price:?}", path.display(), n + 1))?;
        ensure!(
            price > 0.0 && price.is_finite(),
            "{} line {}: price {price}",
            path.display(),
            n + 1
        );
        out.push((name.trim().to_owned(), price));
    }
    Ok(out)
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
    let types = read_types(&resolve(&args.types))?;
    let prices_path = resolve(&args.prices);
    let prices = read_prices(&prices_path)?;
    let by_name: BTreeMap<&str, &TypeRow> = types.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut skipped = Vec::new();
    for (name, price) in &prices {
        match by_name.get(name.as_str()) {
            Some(t) => rows.push((features(t), *price)),
            None => skipped.push(name.clone()),
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

/// splitmix64's output function.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a string.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The generator's draw for a key: `splitmix64(seed ^ fnv1a(key))`.
pub fn draw(seed: u64, key: &str) -> u64 {
    splitmix64(seed ^ fnv1a(key))
}

/// Savings percent (40..=90) and interruption band (0..=4) of a type in a region; mirrors
/// `spot_core::price::SpotAdvisor::generated_entry`.
pub fn advisor_entry(seed: u64, region: &str, instance_type: &str) -> (u32, u32) {
    let h = draw(seed, &format!("advisor/{region}/{instance_type}"));
    let savings = 40 + (h % 51) as u32;
    let band = match (h >> 32) % 100 {
        0..50 => 0,
        50..70 => 1,
        70..82 => 2,
        82..90 => 3,
        _ => 4,
    };
    (savings, band)
}

/// The `ranges` array of the Spot Instance Advisor schema.
fn ranges() -> serde_json::Value {
    json!([
        {"index": 0, "label": "<5%", "dots": 0, "max": 5},
        {"index": 1, "label": "5-10%", "dots": 1, "max": 11},
        {"index": 2, "label": "10-15%", "dots": 2, "max": 16},
        {"index": 3, "label": "15-20%", "dots": 3, "max": 22},
        {"index": 4, "label": ">20%", "dots": 4, "max": 100},
    ])
}

/// Runs `cargo xtask spot-advisor`.
pub fn run_spot(args: &SpotArgs) -> Result<()> {
    let types = read_types(&resolve(&args.types))?;
    let zones_path = resolve(&args.zones);
    let zones =
        std::fs::read_to_string(&zones_path).with_context(|| format!("reading {}", zones_path.display()))?;
    // region -> offered type indexes (any zone).
    let mut offered: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (n, line) in zones.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [region, _zone, hex] = f[..] else {
            bail!("{} line {}: bad line", zones_path.display(), n + 1)
        };
        let set = offered.entry(region.to_owned()).or_default();
        for (i, ch) in hex.chars().enumerate() {
            let nibble = ch
                .to_digit(16)
                .with_context(|| format!("{} line {}: bad hex", zones_path.display(), n + 1))?;
            for bit in 0..4 {
                if nibble & (8 >> bit) != 0 {
                    set.insert(i * 4 + bit);
                }
            }
        }
    }
    let mut advisor = serde_json::Map::new();
    let mut used = BTreeSet::new();
    for (region, set) in &offered {
        let mut linux = serde_json::Map::new();
        for &i in set {
            let Some(t) = types.get(i).filter(|t| t.spot) else {
                continue;
            };
            let (s, r) = advisor_entry(args.seed, region, &t.name);
            linux.insert(t.name.clone(), json!({"s": s, "r": r}));
            used.insert(i);
        }
        advisor.insert(region.clone(), json!({ "Linux": linux }));
    }
    let instance_types: serde_json::Map<String, serde_json::Value> = used
        .iter()
        .filter_map(|&i| types.get(i))
        .map(|t| {
            let ram_gb = (t.memory_mib as f64 / 1024.0 * 100.0).round() / 100.0;
            (
                t.name.clone(),
                json!({"emr": false, "cores": t.vcpus, "ram_gb": ram_gb}),
            )
        })
        .collect();
    let doc = json!({
        "spot_advisor": advisor,
        "instance_types": instance_types,
        "ranges": ranges(),
        "global_rate": "synthetic",
        "generator": {"name": "spot xtask spot-advisor", "seed": args.seed},
    });
    let out = resolve(&args.out);
    let text = serde_json::to_string(&doc)?;
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} bytes): seed {}, {} regions, {} instance types",
        out.display(),
        text.len(),
        args.seed,
        offered.len(),
        used.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_pinned() {
        // The same figures are pinned in spot-core/src/price.rs: keep the generators in step.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            advisor_entry(42, "us-east-1", "m5.large"),
            PINNED_M5_LARGE_SEED_42
        );
    }

    const PINNED_M5_LARGE_SEED_42: (u32, u32) = (42, 0);

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
