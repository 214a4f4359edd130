//! Prices: on-demand and spot USD per hour, and spot interruption-frequency bands.
//!
//! [`PriceSource`] is the seam the provisioner and the selector use. This module has the
//! offline implementations:
//!
//! - [`CsvPrices`]: a user-supplied `instance_type,usd_per_hour` list;
//! - [`EstimateModel`]: a log-linear on-demand estimate from the instance type's
//!   specifications, fitted by `cargo xtask fit-prices` on the us-east-1 on-demand price list
//!   (the coefficients and the fit's error figures are in `spot-core/data/price-model.json`);
//! - [`SpotAdvisor`]: a deterministic, seeded generator of spot savings and interruption bands
//!   in the Spot Instance Advisor JSON schema (AWS publishes its feed under no license that
//!   would let us ship it, so the data is synthetic);
//! - [`OfflinePrices`]: an on-demand source plus a spot advisor, [`OfflinePrices::embedded`]
//!   being the default for offline use.
//!
//! Live deployments use the AWS Pricing API (`GetProducts`) for on-demand prices,
//! `DescribeSpotPriceHistory` for per-zone spot prices and the public advisor feed
//! (`https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json`) for interruption
//! bands instead; those sources live in `spot-aws`.
//!
//! Regions: the offline on-demand data is for us-east-1. As Karpenter's static price table
//! does, every other region falls back to the us-east-1 price, unless a regional multiplier
//! is configured with [`OfflinePrices::with_regional_multiplier`].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::instance_type::{Architecture, InstanceType};

/// A source of prices in USD per hour.
pub trait PriceSource: Send + Sync {
    /// The on-demand price of an instance type in a region.
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64>;
    /// The spot price of an instance type in an availability zone.
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64>;
    /// The spot interruption-frequency band of an instance type in a region: 0 (<5 %),
    /// 1 (5-10 %), 2 (10-15 %), 3 (15-20 %), 4 (>20 %), as in the Spot Instance Advisor.
    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8>;
}

impl<T: PriceSource + ?Sized> PriceSource for &T {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        (**self).on_demand(region, instance_type)
    }
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        (**self).spot(zone, instance_type)
    }
    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        (**self).interruption_band(region, instance_type)
    }
}

impl<T: PriceSource + ?Sized> PriceSource for Arc<T> {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        (**self).on_demand(region, instance_type)
    }
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        (**self).spot(zone, instance_type)
    }
    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        (**self).interruption_band(region, instance_type)
    }
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A line of a price CSV that does not parse.
    #[error("price CSV line {line}: {message}")]
    Csv {
        /// The 1-based line number.
        line: usize,
        /// What is wrong, naming the field and the value.
        message: String,
    },
    /// A file that cannot be read.
    #[error("reading {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        message: String,
    },
    /// A price model file that does not parse or holds invalid coefficients.
    #[error("price model: {0}")]
    Model(String),
    /// A Spot Instance Advisor file that does not parse or holds invalid entries.
    #[error("spot advisor data: {0}")]
    Advisor(String),
}

/// On-demand prices from a CSV file of `instance_type,usd_per_hour` lines, for one region.
///
/// The header line `instance_type,usd_per_hour` is optional; blank lines and lines starting
/// with `#` are skipped. The same price is returned for every region (the list is assumed
/// to be us-east-1, which other regions fall back to). It has no spot prices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsvPrices {
    prices: HashMap<String, f64>,
}

impl CsvPrices {
    /// Parses the CSV text.
    pub fn parse(text: &str) -> Result<CsvPrices, Error> {
        let mut prices = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line_no = n + 1;
            let err = |message: String| Error::Csv {
                line: line_no,
                message,
            };
            let line = if n == 0 {
                raw.trim_start_matches('\u{feff}')
            } else {
                raw
            }
            .trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if n == 0 && fields.len() == 2 && fields[0].eq_ignore_ascii_case("instance_type") {
                if !fields[1].eq_ignore_ascii_case("usd_per_hour") {
                    return Err(err(format!(
                        "header field 2 is {:?}, expected \"usd_per_hour\"",
                        fields[1]
                    )));
                }
                continue;
            }
            let [name, price] = fields[..] else {
                return Err(err(format!(
                    "expected 2 fields (instance_type,usd_per_hour), found {}",
                    fields.len()
                )));
            };
            if name.is_empty() || !name.contains('.') || name.contains(char::is_whitespace) {
                return Err(err(format!(
                    "field instance_type: {name:?} is not an instance type name"
                )));
            }
            let value: f64 = price
                .parse()
                .map_err(|_| err(format!("field usd_per_hour: {price:?} is not a number")))?;
            if !value.is_finite() || value < 0.0 {
                return Err(err(format!(
                    "field usd_per_hour: {price:?} is not a non-negative price"
                )));
            }
            if let Some(first) = first_line.insert(name.to_owned(), line_no) {
                return Err(err(format!(
                    "instance type {name:?} is listed twice (first on line {first})"
                )));
            }
            prices.insert(name.to_owned(), value);
        }
        Ok(CsvPrices { prices })
    }

    /// Reads and parses a CSV file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<CsvPrices, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        CsvPrices::parse(&text)
    }

    /// The price of an instance type.
    pub fn get(&self, instance_type: &str) -> Option<f64> {
        self.prices.get(instance_type).copied()
    }

    /// Number of priced instance types.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether no instance type is priced.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// Every `(instance type, price)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.prices.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

impl PriceSource for CsvPrices {
    fn on_demand(&self, _region: &str, instance_type: &str) -> Option<f64> {
        self.get(instance_type)
    }
    fn spot(&self, _zone: &str, _instance_type: &str) -> Option<f64> {
        None
    }
    fn interruption_band(&self, _region: &str, _instance_type: &str) -> Option<u8> {
        None
    }
}

/// The fit's error figures, as recorded in `price-model.json` by `cargo xtask fit-prices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitMetrics {
    /// Region of the price list fitted on.
    pub region: String,
    /// File name of the price list fitted on.
    pub fitted_on: String,
    /// Priced instance types found in the catalog (the rows fitted).
    pub rows: usize,
    /// Median absolute percentage error over the rows.
    pub median_ape_percent: f64,
    /// 90th-percentile absolute percentage error over the rows.
    pub p90_ape_percent: f64,
    /// Median absolute percentage error on held-out rows (5-fold cross-validation).
    pub cross_validated_median_ape_percent: f64,
    /// 90th-percentile absolute percentage error on held-out rows (5-fold cross-validation).
    pub cross_validated_p90_ape_percent: f64,
}

#[derive(Debug, Deserialize)]
struct ModelFile {
    #[serde(flatten)]
    metrics: FitMetrics,
    coefficients: BTreeMap<String, f64>,
}

#[derive(Debug, Clone)]
enum CatalogRef {
    Embedded,
    Owned(Arc<Catalog>),
}

impl CatalogRef {
    fn get(&self) -> &Catalog {
        match self {
            CatalogRef::Embedded => Catalog::embedded(),
            CatalogRef::Owned(c) => c,
        }
    }
}

static EMBEDDED_MODEL: LazyLock<EstimateModel> =
    LazyLock::new(
        || match EstimateModel::from_json(include_str!("../data/price-model.json")) {
            Ok(model) => model,
            // Committed data checked by this module's tests: a failure is a build defect.
            Err(err) => panic!("spot-core/data/price-model.json is invalid: {err}"),
        },
    );

/// A log-linear estimate of the us-east-1 Linux on-demand price from an instance type's
/// specifications: `ln(usd_per_hour) = Σ coefficient × feature` over
/// [`EstimateModel::features`]; a feature without a coefficient counts 0.
///
/// The coefficients are fitted by `cargo xtask fit-prices` (ordinary least squares in log
/// space with a small ridge term) on the us-east-1 on-demand price list; [`FitMetrics`]
/// gives its error. Use it when no price list is at hand; it is an estimate, not a quote.
#[derive(Debug, Clone)]
pub struct EstimateModel {
    coefficients: BTreeMap<String, f64>,
    metrics: FitMetrics,
    catalog: CatalogRef,
}

impl EstimateModel {
    /// The model committed in `spot-core/data/price-model.json`, over the embedded catalog.
    pub fn embedded() -> &'static EstimateModel {
        &EMBEDDED_MODEL
    }

    /// Parses a model file written by `cargo xtask fit-prices`; instance types are looked up
    /// in the embedded catalog unless [`EstimateModel::with_catalog`] says otherwise.
    pub fn from_json(text: &str) -> Result<EstimateModel, Error> {
        let file: ModelFile = serde_json::from_str(text).map_err(|e| Error::Model(e.to_string()))?;
        if let Some((name, value)) = file.coefficients.iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Model(format!("coefficient {name:?} is {value}")));
        }
        if !file.coefficients.contains_key("intercept") {
            return Err(Error::Model("no \"intercept\" coefficient".to_owned()));
        }
        Ok(EstimateModel {
            coefficients: file.coefficients,
            metrics: file.metrics,
            catalog: CatalogRef::Embedded,
        })
    }

    /// The same model, looking instance types up in another catalog.
    #[must_use]
    pub fn with_catalog(mut self, catalog: Arc<Catalog>) -> EstimateModel {
        self.catalog = CatalogRef::Owned(catalog);
        self
    }

    /// The fit's error figures.
    pub fn metrics(&self) -> &FitMetrics {
        &self.metrics
    }

    /// The coefficients by feature name.
    pub fn coefficients(&self) -> &BTreeMap<String, f64> {
        &self.coefficients
    }

    /// The regression features of an instance type, by name: `intercept` 1; `ln_vcpus`;
    /// `ln_memory_gib` (at least 0.25 GiB); `ln1p_storage_gb`; `ln1p_network_gbps`;
    /// `category:<c>` and `family:<f>` 1; `generation` (capped at 10); for GPU types
    /// `gpu:<manufacturer> <model>` = ln(1 + GPUs) and `ln1p_gpu_memory_gib`; `suffix:<x>` 1
    /// for each letter after the generation (`d`, `n`, `g`, ...) and each `-part`
    /// (`flex`); `arch:arm64`, `cpu:amd`, `metal`, `burstable` 1 when they apply.
    ///
    /// `xtask/src/prices.rs` mirrors this function; keep them in step.
    pub fn features(t: &InstanceType) -> Vec<(String, f64)> {
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
        let rest = t
            .family
            .get(t.category.len()..)
            .unwrap_or("")
            .trim_start_matches(|c: char| c.is_ascii_digit());
        let mut parts = rest.split('-');
        for letter in parts.next().unwrap_or("").chars() {
            f.push((format!("suffix:{letter}"), 1.0));
        }
        for part in parts {
            f.push((format!("suffix:{part}"), 1.0));
        }
        if t.architectures.first() == Some(&Architecture::Arm64) {
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

    /// The estimated us-east-1 on-demand price of the instance type, USD per hour.
    pub fn estimate(&self, t: &InstanceType) -> f64 {
        let ln: f64 = Self::features(t)
            .iter()
            .filter_map(|(n, v)| self.coefficients.get(n).map(|c| c * v))
            .sum();
        ln.exp()
    }
}

impl PriceSource for EstimateModel {
    /// The estimate for every region (us-east-1 figures; see the module documentation).
    fn on_demand(&self, _region: &str, instance_type: &str) -> Option<f64> {
        self.catalog
            .get()
            .get(instance_type)
            .ok()
            .map(|t| self.estimate(t))
    }
    fn spot(&self, _zone: &str, _instance_type: &str) -> Option<f64> {
        None
    }
    fn interruption_band(&self, _region: &str, _instance_type: &str) -> Option<u8> {
        None
    }
}

/// One advisor entry: savings versus on-demand and interruption band.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorEntry {
    /// Savings in percent versus on-demand.
    pub s: u8,
    /// Interruption-frequency band, an index into [`SpotAdvisor::ranges`] (0..=4).
    pub r: u8,
}

/// The `instance_types` entries of the advisor schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvisorInstanceType {
    /// Whether EMR supports the type (always false in generated data).
    pub emr: bool,
    /// vCPUs.
    pub cores: u32,
    /// Memory in GiB.
    pub ram_gb: f64,
}

/// The `ranges` entries of the advisor schema: interruption-frequency bands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorRange {
    /// The band index (`r`).
    pub index: u8,
    /// Human label (`<5%`).
    pub label: String,
    /// Dots the AWS console shows.
    pub dots: u8,
    /// Upper bound of the interruption frequency, percent.
    pub max: u8,
}

/// How a generated advisor file was made (absent from AWS's feed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvisorGenerator {
    /// The generator's name.
    pub name: String,
    /// The seed.
    pub seed: u64,
}

/// Spot savings and interruption bands in the Spot Instance Advisor JSON schema:
/// `{"spot_advisor": {"<region>": {"Linux": {"<type>": {"s": savings %, "r": band}}}},
/// "instance_types": {...}, "ranges": [...]}`.
///
/// [`SpotAdvisor::generate`] synthesizes one deterministically from a seed (splitmix64 over
/// FNV-1a of the key): savings 40-90 %, bands 0-4 with weights 50/20/12/8/10 %. A zone's spot
/// price is `on-demand × (1 − s/100) × f`, `f` a per-(zone, type) factor in [0.95, 1.05],
/// so spot stays below on-demand. `cargo xtask spot-advisor --seed N --out FILE` writes the
/// same data. [`SpotAdvisor::from_json`] also reads AWS's real feed (seed 0 then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpotAdvisor {
    /// Region → operating system (`Linux`, `Windows`) → instance type → entry.
    pub spot_advisor: BTreeMap<String, BTreeMap<String, BTreeMap<String, AdvisorEntry>>>,
    /// Instance type summaries.
    #[serde(default)]
    pub instance_types: BTreeMap<String, AdvisorInstanceType>,
    /// The interruption-frequency bands.
    #[serde(default)]
    pub ranges: Vec<AdvisorRange>,
    /// AWS's global interruption rate text (`synthetic` for generated data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rate: Option<String>,
    /// The generator and seed, for generated data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<AdvisorGenerator>,
}

/// splitmix64's output function.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn draw(seed: u64, key: &str) -> u64 {
    splitmix64(seed ^ fnv1a(key))
}

/// The seed of [`OfflinePrices::embedded`].
pub const EMBEDDED_SPOT_SEED: u64 = 0x5107;

impl SpotAdvisor {
    /// The five standard bands of the advisor feed.
    pub fn standard_ranges() -> Vec<AdvisorRange> {
        [
            ("<5%", 5),
            ("5-10%", 11),
            ("10-15%", 16),
            ("15-20%", 22),
            (">20%", 100),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(label, max))| AdvisorRange {
            index: i as u8,
            label: label.to_owned(),
            dots: i as u8,
            max,
        })
        .collect()
    }

    /// The generated entry of a type in a region for a seed (savings 40..=90, band 0..=4).
    pub fn generated_entry(seed: u64, region: &str, instance_type: &str) -> AdvisorEntry {
        let h = draw(seed, &format!("advisor/{region}/{instance_type}"));
        let s = 40 + (h % 51) as u8;
        let r = match (h >> 32) % 100 {
            0..50 => 0,
            50..70 => 1,
            70..82 => 2,
            82..90 => 3,
            _ => 4,
        };
        AdvisorEntry { s, r }
    }

    /// Generates advisor data for every spot-capable type offered in each region of the
    /// catalog.
    pub fn generate(catalog: &Catalog, seed: u64) -> SpotAdvisor {
        let mut spot_advisor = BTreeMap::new();
        let mut instance_types = BTreeMap::new();
        for region in catalog.regions() {
            let zones = catalog.zones(region).unwrap_or_default();
            let mut linux = BTreeMap::new();
            for t in catalog.types().iter().filter(|t| t.spot_supported) {
                if zones.iter().any(|z| catalog.is_offered(z, &t.name)) {
                    linux.insert(
                        t.name.clone(),
                        SpotAdvisor::generated_entry(seed, region, &t.name),
                    );
                    instance_types
                        .entry(t.name.clone())
                        .or_insert_with(|| AdvisorInstanceType {
                            emr: false,
                            cores: t.vcpus,
                            ram_gb: (t.memory_mib as f64 / 1024.0 * 100.0).round() / 100.0,
                        });
                }
            }
            spot_advisor.insert(region.to_owned(), BTreeMap::from([("Linux".to_owned(), linux)]));
        }
        SpotAdvisor {
            spot_advisor,
            instance_types,
            ranges: SpotAdvisor::standard_ranges(),
            global_rate: Some("synthetic".to_owned()),
            generator: Some(AdvisorGenerator {
                name: "spot xtask spot-advisor".to_owned(),
                seed,
            }),
        }
    }

    /// Parses advisor JSON (generated, or AWS's feed); rejects savings above 100 % and bands
    /// outside the ranges.
    pub fn from_json(text: &str) -> Result<SpotAdvisor, Error> {
        let advisor: SpotAdvisor = serde_json::from_str(text).map_err(|e| Error::Advisor(e.to_string()))?;
        let bands = if advisor.ranges.is_empty() {
            5
        } else {
            advisor.ranges.len()
        };
        for (region, oses) in &advisor.spot_advisor {
            for (os, types) in oses {
                for (name, e) in types {
                    if e.s > 100 || usize::from(e.r) >= bands {
                        return Err(Error::Advisor(format!(
                            "{region}/{os}/{name}: savings {} or band {} out of range",
                            e.s, e.r
                        )));
                    }
                }
            }
        }
        Ok(advisor)
    }

    /// Reads and parses an advisor file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<SpotAdvisor, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        SpotAdvisor::from_json(&text)
    }

    /// The JSON text (compact).
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string(self).map_err(|e| Error::Advisor(e.to_string()))
    }

    /// The seed the data was generated with (0 for AWS's feed).
    pub fn seed(&self) -> u64 {
        self.generator.as_ref().map_or(0, |g| g.seed)
    }

    /// The Linux entry of a type in a region.
    pub fn entry(&self, region: &str, instance_type: &str) -> Option<AdvisorEntry> {
        self.spot_advisor
            .get(region)?
            .get("Linux")?
            .get(instance_type)
            .copied()
    }

    /// The per-(zone, type) price factor, in [0.95, 1.05].
    pub fn zone_factor(&self, zone: &str, instance_type: &str) -> f64 {
        0.95 + (draw(self.seed(), &format!("zone/{zone}/{instance_type}")) % 1001) as f64 / 10_000.0
    }

    /// The spot price in a zone of `region` given the on-demand price there.
    pub fn spot_price(&self, on_demand: f64, region: &str, zone: &str, instance_type: &str) -> Option<f64> {
        let e = self.entry(region, instance_type)?;
        Some(on_demand * (1.0 - f64::from(e.s) / 100.0) * self.zone_factor(zone, instance_type))
    }
}

/// Offline prices: an on-demand source ([`CsvPrices`], [`EstimateModel`], ...) and a
/// [`SpotAdvisor`] for spot prices and interruption bands.
///
/// On-demand prices of regions without a configured multiplier are the source's own
/// (us-east-1) figures, as Karpenter falls back to us-east-1; a multiplier from
/// [`OfflinePrices::with_regional_multiplier`] scales a region's on-demand and spot prices.
pub struct OfflinePrices {
    on_demand: Box<dyn PriceSource>,
    advisor: SpotAdvisor,
    zone_regions: HashMap<String, String>,
    multipliers: BTreeMap<String, f64>,
}

impl std::fmt::Debug for OfflinePrices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflinePrices")
            .field("seed", &self.advisor.seed())
            .field("zones", &self.zone_regions.len())
            .field("multipliers", &self.multipliers)
            .finish_non_exhaustive()
    }
}

static EMBEDDED_PRICES: LazyLock<OfflinePrices> = LazyLock::new(|| {
    let catalog = Catalog::embedded();
    OfflinePrices::new(
        EstimateModel::embedded(),
        SpotAdvisor::generate(catalog, EMBEDDED_SPOT_SEED),
        catalog,
    )
});

impl OfflinePrices {
    /// Combines an on-demand source and advisor data; `catalog` maps zones to regions.
    pub fn new(
        on_demand: impl PriceSource + 'static,
        advisor: SpotAdvisor,
        catalog: &Catalog,
    ) -> OfflinePrices {
        let zone_regions = catalog
            .regions()
            .into_iter()
            .flat_map(|r| {
                catalog
                    .zones(r)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |z| (z.to_owned(), r.to_owned()))
            })
            .collect();
        OfflinePrices {
            on_demand: Box::new(on_demand),
            advisor,
            zone_regions,
            multipliers: BTreeMap::new(),
        }
    }

    /// The default offline prices: [`EstimateModel::embedded`] for on-demand, spot data
    /// generated from the embedded catalog with [`EMBEDDED_SPOT_SEED`].
    pub fn embedded() -> &'static OfflinePrices {
        &EMBEDDED_PRICES
    }

    /// Scales the prices of `region` by `multiplier` (ignored unless finite and positive).
    #[must_use]
    pub fn with_regional_multiplier(mut self, region: impl Into<String>, multiplier: f64) -> OfflinePrices {
        if multiplier.is_finite() && multiplier > 0.0 {
            self.multipliers.insert(region.into(), multiplier);
        }
        self
    }

    /// The spot advisor data.
    pub fn advisor(&self) -> &SpotAdvisor {
        &self.advisor
    }

    /// The region of a zone: from the catalog, else the zone name without its trailing
    /// letters (`us-east-1a` → `us-east-1`).
    pub fn region_of<'a>(&'a self, zone: &'a str) -> &'a str {
        match self.zone_regions.get(zone) {
            Some(region) => region,
            None => zone.trim_end_matches(|c: char| c.is_ascii_lowercase()),
        }
    }

    fn multiplier(&self, region: &str) -> f64 {
        self.multipliers.get(region).copied().unwrap_or(1.0)
    }
}

impl PriceSource for OfflinePrices {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        Some(self.on_demand.on_demand(region, instance_type)? * self.multiplier(region))
    }
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        let region = self.region_of(zone);
        let on_demand = self.on_demand(region, instance_type)?;
        self.advisor.spot_price(on_demand, region, zone, instance_type)
    }
    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        self.advisor.entry(region, instance_type).map(|e| e.r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parses_with_and_without_header() {
        let p =
            CsvPrices::parse("instance_type,usd_per_hour\nm5.large,0.096\n\n# c\nc5.xlarge, 0.17\n").unwrap();
        assert_eq!(
            (p.len(), p.get("m5.large"), p.get("c5.xlarge")),
            (2, Some(0.096), Some(0.17))
        );
        assert_eq!(p.on_demand("eu-west-1", "m5.large"), Some(0.096));
        assert_eq!(
            (p.spot("us-east-1a", "m5.large"), p.get("m6.large")),
            (None, None)
        );
        let p = CsvPrices::parse("\u{feff}m5.large,0.096").unwrap();
        assert_eq!(p.get("m5.large"), Some(0.096));
    }

    #[test]
    fn csv_errors_name_line_and_field() {
        let err =
            CsvPrices::parse("instance_type,usd_per_hour\nm5.large,0.096\nc5.xlarge,cheap\n").unwrap_err();
        assert_eq!(
            err,
            Error::Csv {
                line: 3,
                message: "field usd_per_hour: \"cheap\" is not a number".into()
            }
        );
        assert!(err.to_string().contains("line 3"));
        let err = CsvPrices::parse("m5.large,0.1,x").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("found 3"), "{err}");
        let err = CsvPrices::parse("m5.large,1\nlarge,2").unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("instance_type") && err.contains("\"large\""),
            "{err}"
        );
        let err = CsvPrices::parse("m5.large,-1").unwrap_err().to_string();
        assert!(err.contains("usd_per_hour") && err.contains("-1"), "{err}");
        let err = CsvPrices::parse("m5.large,1\n\nm5.large,2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("first on line 1"), "{err}");
        let err = CsvPrices::parse("instance_type,price").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("price"), "{err}");
        let err = CsvPrices::from_path("/nonexistent/prices.csv")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/prices.csv"), "{err}");
    }

    #[test]
    fn estimate_close_to_list_prices() {
        // us-east-1 list prices (2026-07-20): m5.large 0.096, c5.xlarge 0.17, r6g.2xlarge
        // 0.4032, t3.micro 0.0104.
        let m = EstimateModel::embedded();
        for (name, list) in [
            ("m5.large", 0.096),
            ("c5.xlarge", 0.17),
            ("r6g.2xlarge", 0.4032),
            ("t3.micro", 0.0104),
        ] {
            let est = m.on_demand("us-east-1", name).unwrap();
            assert!(
                (est - list).abs() / list < 0.10,
                "{name}: estimate {est} vs list {list}"
            );
        }
        assert_eq!(m.on_demand("us-east-1", "m99.huge"), None);
        let metrics = m.metrics();
        assert!(metrics.rows > 1000 && metrics.median_ape_percent < 5.0 && metrics.p90_ape_percent < 20.0);
        // Bigger sizes cost more; GPUs cost more.
        let c = Catalog::embedded();
        assert!(m.estimate(c.get("m5.2xlarge").unwrap()) > m.estimate(c.get("m5.large").unwrap()));
        assert!(m.estimate(c.get("g5.xlarge").unwrap()) > m.estimate(c.get("m5.xlarge").unwrap()));
    }

    /// Recomputes the fit's in-sample error with this file's feature code: a mismatch means
    /// `xtask/src/prices.rs` and [`EstimateModel::features`] drifted apart.
    #[test]
    fn features_match_the_fit() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ondemand-us-east-1.csv");
        let Ok(prices) = CsvPrices::from_path(&path) else {
            eprintln!("{} not found: skipping the parity check", path.display());
            return;
        };
        let (m, c) = (EstimateModel::embedded(), Catalog::embedded());
        let mut apes: Vec<f64> = prices
            .iter()
            .filter_map(|(name, list)| {
                c.get(name)
                    .ok()
                    .map(|t| ((m.estimate(t) - list) / list).abs() * 100.0)
            })
            .collect();
        apes.sort_by(f64::total_cmp);
        assert_eq!(apes.len(), m.metrics().rows);
        let median = apes[apes.len().div_ceil(2) - 1];
        assert!(
            (median - m.metrics().median_ape_percent).abs() < 0.01,
            "{median} vs {:?}",
            m.metrics()
        );
    }

    #[test]
    fn model_file_errors() {
        assert!(matches!(EstimateModel::from_json("{}"), Err(Error::Model(_))));
        let no_intercept = r#"{"region":"r","fitted_on":"f","rows":1,"median_ape_percent":1,"p90_ape_percent":1,
            "cross_validated_median_ape_percent":1,"cross_validated_p90_ape_percent":1,"coefficients":{"x":1}}"#;
        assert!(
            EstimateModel::from_json(no_intercept)
                .unwrap_err()
                .to_string()
                .contains("intercept")
        );
    }

    #[test]
    fn generator_is_pinned_and_deterministic() {
        // The same figures are pinned in xtask/src/prices.rs: keep the generators in step.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(
            SpotAdvisor::generated_entry(42, "us-east-1", "m5.large"),
            AdvisorEntry { s: 42, r: 0 }
        );
        assert_eq!(
            SpotAdvisor::generated_entry(42, "eu-west-1", "c5.xlarge"),
            AdvisorEntry { s: 70, r: 1 }
        );
        assert_eq!(
            SpotAdvisor::generated_entry(42, "us-west-2", "r6g.2xlarge"),
            AdvisorEntry { s: 90, r: 2 }
        );
        let c = Catalog::embedded();
        let a = SpotAdvisor::generate(c, 42);
        assert_eq!(a, SpotAdvisor::generate(c, 42));
        assert_ne!(a.spot_advisor, SpotAdvisor::generate(c, 43).spot_advisor);
        assert_eq!(a.spot_advisor.len(), 30);
        assert_eq!(
            a.entry("us-east-1", "m5.large"),
            Some(AdvisorEntry { s: 42, r: 0 })
        );
        let round_trip = SpotAdvisor::from_json(&a.to_json().unwrap()).unwrap();
        assert_eq!(round_trip, a);
        assert_eq!(round_trip.seed(), 42);
        // Bands are spread over all five ranges.
        let mut bands = [0usize; 5];
        for e in a.spot_advisor["us-east-1"]["Linux"].values() {
            bands[usize::from(e.r)] += 1;
        }
        assert!(bands.iter().all(|&n| n > 0), "{bands:?}");
    }

    #[test]
    fn advisor_rejects_bad_entries() {
        let bad = r#"{"spot_advisor":{"us-east-1":{"Linux":{"m5.large":{"s":120,"r":0}}}}}"#;
        assert!(
            SpotAdvisor::from_json(bad)
                .unwrap_err()
                .to_string()
                .contains("m5.large")
        );
        let bad = r#"{"spot_advisor":{"us-east-1":{"Linux":{"m5.large":{"s":50,"r":7}}}}}"#;
        assert!(SpotAdvisor::from_json(bad).is_err());
        assert!(matches!(SpotAdvisor::from_json("[]"), Err(Error::Advisor(_))));
    }

    #[test]
    fn offline_prices() {
        let p = OfflinePrices::embedded();
        let od = p.on_demand("us-east-1", "m5.large").unwrap();
        assert_eq!(
            Some(od),
            p.on_demand("eu-west-1", "m5.large"),
            "falls back to us-east-1"
        );
        let mut zone_prices = Vec::new();
        for zone in Catalog::embedded().offered_zones("us-east-1", "m5.large") {
            let spot = p.spot(zone, "m5.large").unwrap();
            assert!(spot > 0.0 && spot < od, "{zone}: spot {spot} vs on-demand {od}");
            assert_eq!(p.spot(zone, "m5.large"), Some(spot), "deterministic");
            zone_prices.push(spot);
        }
        assert!(
            zone_prices.windows(2).any(|w| w[0] != w[1]),
            "zones differ: {zone_prices:?}"
        );
        assert!(
            p.interruption_band("us-east-1", "m5.large")
                .is_some_and(|b| b <= 4)
        );
        assert_eq!(p.spot("us-east-1a", "m99.huge"), None);
        // Every spot price of a region is below on-demand.
        for t in Catalog::embedded()
            .types()
            .iter()
            .filter(|t| t.spot_supported)
            .take(200)
        {
            if let (Some(s), Some(o)) = (p.spot("us-west-2a", &t.name), p.on_demand("us-west-2", &t.name)) {
                assert!(s < o, "{}: {s} >= {o}", t.name);
            }
        }

        let csv = CsvPrices::parse("m5.large,0.1").unwrap();
        let advisor = SpotAdvisor::generate(Catalog::embedded(), 7);
        let p =
            OfflinePrices::new(csv, advisor, Catalog::embedded()).with_regional_multiplier("eu-west-1", 1.1);
        assert_eq!(p.on_demand("us-east-1", "m5.large"), Some(0.1));
        assert!((p.on_demand("eu-west-1", "m5.large").unwrap() - 0.11).abs() < 1e-12);
        let e = p.advisor().entry("eu-west-1", "m5.large").unwrap();
        let spot = p.spot("eu-west-1a", "m5.large").unwrap();
        let base = 0.11 * (1.0 - f64::from(e.s) / 100.0);
        assert!(
            spot >= base * 0.95 - 1e-12 && spot <= base * 1.05 + 1e-12,
            "{spot} vs {base}"
        );
        assert_eq!(p.region_of("xx-test-9z"), "xx-test-9");
        // Usable as a trait object and through references.
        let dynamic: &dyn PriceSource = &p;
        assert_eq!(dynamic.on_demand("us-east-1", "m5.large"), Some(0.1));
    }
}
