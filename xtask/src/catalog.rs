//! `cargo xtask catalog`: regenerates the embedded instance-type catalog of `spot-core` from
//! the EC2 data shipped in the `moto` Python package (Apache-2.0).
//!
//! The wheel is fetched with `python3 -m pip download moto==VERSION --no-deps` into
//! `target/moto-wheel/`, checked against a pinned SHA-256 when the version is the pinned one,
//! and read with the `zip` crate. Three files are written under `spot-core/data/`:
//!
//! - `types.csv`: one line per instance type, sorted by name (format documented in
//!   `spot-core/src/catalog.rs`);
//! - `zones.txt`: one line per availability zone, `REGION ZONE HEX`, where `HEX` is a bitmap
//!   over the lines of `types.csv`;
//! - `MANIFEST`: the moto version, the wheel's SHA-256 and the counts the tests check.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::GzDecoder;
use serde::Deserialize;

/// The moto version the committed catalog is generated from.
pub const PINNED_MOTO_VERSION: &str = "5.2.5";
/// SHA-256 of `moto-5.2.5-py3-none-any.whl` as published on PyPI.
pub const PINNED_WHEEL_SHA256: &str = "eef62cdcf3bfe73e0863743511ba042dfaba04ba3d5ecdcb896a196c693ad528";

const TYPES_JSON: &str = "moto/ec2/resources/instance_types.json.gz";
const AZ_PREFIX: &str = "moto/ec2/resources/instance_type_offerings/availability-zone/";

/// Arguments of `cargo xtask catalog`.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// moto version to read the data from. Any other version than the pinned one is read
    /// without checking the wheel's SHA-256.
    #[arg(long, default_value = PINNED_MOTO_VERSION)]
    pub moto_version: String,
    /// Use this wheel instead of downloading one with pip.
    #[arg(long)]
    pub wheel: Option<PathBuf>,
    /// Directory to write `types.csv`, `zones.txt` and `MANIFEST` to.
    #[arg(long, default_value = "spot-core/data")]
    pub out: PathBuf,
    /// Only compare the generated files with the committed ones; fail when they differ.
    #[arg(long)]
    pub check: bool,
}

/// The repository root (the parent of the xtask crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Runs `cargo xtask catalog`.
pub fn run(args: &CatalogArgs) -> Result<()> {
    let root = repo_root();
    let wheel = match &args.wheel {
        Some(path) => path.clone(),
        None => download_wheel(&root, &args.moto_version)?,
    };
    let bytes = std::fs::read(&wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let sha = sha256_hex(&wheel)?;
    if args.moto_version == PINNED_MOTO_VERSION {
        ensure!(
            sha == PINNED_WHEEL_SHA256,
            "{} has SHA-256 {sha}, expected {PINNED_WHEEL_SHA256} for moto {PINNED_MOTO_VERSION}",
            wheel.display()
        );
    }
    let files = generate(&bytes, &args.moto_version, &wheel, &sha)?;
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    if args.check {
        let mut stale = Vec::new();
        for (name, text) in &files {
            let path = out.join(name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if &current != text {
                stale.push(path.display().to_string());
            }
        }
        if !stale.is_empty() {
            bail!(
                "catalog data is stale, run `cargo xtask catalog`: {}",
                stale.join(", ")
            );
        }
        println!("catalog data in {} is up to date", out.display());
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (name, text) in &files {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({} bytes)", path.display(), text.len());
    }
    Ok(())
}

fn download_wheel(root: &Path, version: &str) -> Result<PathBuf> {
    let dir = root.join("target").join("moto-wheel");
    let wheel = dir.join(format!("moto-{version}-py3-none-any.whl"));
    if wheel.is_file() {
        return Ok(wheel);
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            &format!("moto=={version}"),
            "--no-deps",
            "-d",
        ])
        .arg(&dir)
        .status()
        .context("running `python3 -m pip download` (is python3 with pip installed?)")?;
    ensure!(
        status.success(),
        "`python3 -m pip download moto=={version}` failed: {status}"
    );
    ensure!(wheel.is_file(), "pip did not produce {}", wheel.display());
    Ok(wheel)
}

/// SHA-256 of a file, computed by Python's hashlib (python3 is needed for pip anyway and
/// keeps xtask free of a hashing crate).
fn sha256_hex(path: &Path) -> Result<String> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(path)
        .output()
        .context("running python3 to hash the wheel")?;
    ensure!(
        output.status.success(),
        "hashing {} failed: {}",
        path.display(),
        output.status
    );
    let hex = String::from_utf8(output.stdout)
        .context("python3 printed non-UTF-8")?
        .trim()
        .to_owned();
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "bad SHA-256 output {hex:?}"
    );
    Ok(hex)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TypeInfo {
    instance_type: String,
    bare_metal: bool,
    burstable_performance_supported: bool,
    current_generation: bool,
    #[serde(default)]
    hypervisor: Option<String>,
    memory_info: MemoryInfo,
    network_info: NetworkInfo,
    processor_info: ProcessorInfo,
    #[serde(default)]
    supported_usage_classes: Vec<String>,
    v_cpu_info: VCpuInfo,
    #[serde(default)]
    gpu_info: Option<GpuInfo>,
    #[serde(default)]
    instance_storage_info: Option<StorageInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MemoryInfo {
    size_in_mi_b: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkInfo {
    network_performance: String,
    maximum_network_interfaces: u32,
    ipv4_addresses_per_interface: u32,
    #[serde(default)]
    network_cards: Vec<NetworkCard>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkCard {
    #[serde(default)]
    baseline_bandwidth_in_gbps: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessorInfo {
    #[serde(default)]
    manufacturer: Option<String>,
    supported_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VCpuInfo {
    default_v_cpus: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GpuInfo {
    #[serde(default)]
    gpus: Vec<Gpu>,
    #[serde(default)]
    total_gpu_memory_in_mi_b: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Gpu {
    count: u32,
    #[serde(default)]
    manufacturer: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StorageInfo {
    total_size_in_g_b: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OfferingRow {
    instance_type: String,
    location: String,
}

fn gunzip_entry(archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>> {
    let mut entry = archive
        .by_name(name)
        .with_context(|| format!("{name} not found in the wheel"))?;
    let mut gz = Vec::new();
    entry
        .read_to_end(&mut gz)
        .with_context(|| format!("reading {name}"))?;
    let mut raw = Vec::new();
    GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .with_context(|| format!("gunzipping {name}"))?;
    Ok(raw)
}

/// Builds the three data files from the wheel's bytes: `(file name, contents)`.
fn generate(wheel: &[u8], version: &str, wheel_path: &Path, sha: &str) -> Result<Vec<(String, String)>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel)).context("opening the wheel")?;
    let raw = gunzip_entry(&mut archive, TYPES_JSON)?;
    let infos: BTreeMap<String, TypeInfo> =
        serde_json::from_slice(&raw).context("parsing instance_types.json")?;
    let index: BTreeMap<&str, usize> = infos
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();

    let mut types = String::new();
    writeln!(types, "{}", spot_core::catalog::TYPES_HEADER)?;
    for (name, info) in &infos {
        ensure!(
            name == &info.instance_type,
            "key {name} holds {}",
            info.instance_type
        );
        types.push_str(&type_line(info)?);
        types.push('\n');
    }

    let region_files: Vec<String> = archive
        .file_names()
        .filter(|n| n.starts_with(AZ_PREFIX) && n.ends_with(".json.gz"))
        .map(str::to_owned)
        .collect();
    ensure!(
        !region_files.is_empty(),
        "no availability-zone offerings in the wheel"
    );
    // region -> zone -> set of type indexes.
    let mut zones: BTreeMap<String, BTreeMap<String, BTreeSet<usize>>> = BTreeMap::new();
    for file in &region_files {
        let region = file
            .trim_start_matches(AZ_PREFIX)
            .trim_end_matches(".json.gz")
            .to_owned();
        let rows: Vec<OfferingRow> = serde_json::from_slice(&gunzip_entry(&mut archive, file)?)
            .with_context(|| format!("parsing {file}"))?;
        let by_zone = zones.entry(region.clone()).or_default();
        for row in rows {
            let Some(&i) = index.get(row.instance_type.as_str()) else {
                bail!(
                    "{file}: {} is offered but not in instance_types.json",
                    row.instance_type
                );
            };
            ensure!(
                row.location.starts_with(&region) && !row.location.contains(char::is_whitespace),
                "{file}: zone {:?} is not in region {region}",
                row.location
            );
            by_zone.entry(row.location).or_default().insert(i);
        }
    }

    let mut zone_text = String::new();
    zone_text.push_str(
        "# Generated by `cargo xtask catalog`; do not edit.\n\
         # REGION ZONE HEX: bit i of HEX (nibble i/4, value 8 >> i%4) set = line i of types.csv\n\
         # (0-based, header excluded) is offered in ZONE.\n",
    );
    let (mut zone_count, mut offerings) = (0usize, 0usize);
    for (region, by_zone) in &zones {
        for (zone, set) in by_zone {
            zone_count += 1;
            offerings += set.len();
            writeln!(zone_text, "{region} {zone} {}", bitmap_hex(set, infos.len()))?;
        }
    }

    let wheel_name = wheel_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = format!(
        "# Generated by `cargo xtask catalog` from the moto Python package (Apache-2.0); do not edit.\n\
         moto_version={version}\nwheel={wheel_name}\nwheel_sha256={sha}\ntypes={}\nregions={}\nzones={zone_count}\n\
         offerings={offerings}\n",
        infos.len(),
        zones.len(),
    );
    println!(
        "moto {version}: {} instance types, {} regions, {zone_count} zones, {offerings} zone offerings",
        infos.len(),
        zones.len()
    );
    Ok(vec![
        ("types.csv".to_owned(), types),
        ("zones.txt".to_owned(), zone_text),
        ("MANIFEST".to_owned(), manifest),
    ])
}

fn bitmap_hex(set: &BTreeSet<usize>, len: usize) -> String {
    let mut nibbles = vec![0u8; len.div_ceil(4)];
    for &i in set {
        nibbles[i / 4] |= 8 >> (i % 4);
    }
    nibbles
        .iter()
        .map(|n| char::from_digit(u32::from(*n), 16).unwrap_or('0'))
        .collect()
}

fn checked<'a>(name: &str, field: &str, value: &'a str) -> Result<&'a str> {
    ensure!(
        !value.contains([',', '"', '\n', '\r', '|']),
        "{name}: {field} {value:?} contains a character the CSV format cannot hold"
    );
    Ok(value)
}

fn type_line(info: &TypeInfo) -> Result<String> {
    let name = checked(&info.instance_type, "name", &info.instance_type)?;
    let archs = info
        .processor_info
        .supported_architectures
        .iter()
        .map(|a| checked(name, "architecture", a))
        .collect::<Result<Vec<_>>>()?
        .join("|");
    let usage = info
        .supported_usage_classes
        .iter()
        .map(|u| checked(name, "usage class", u))
        .collect::<Result<Vec<_>>>()?
        .join("|");
    let (gpus, gpu_mem, gpu_maker, gpu_model) = match &info.gpu_info {
        Some(g) => (
            g.gpus.iter().map(|x| x.count).sum::<u32>(),
            g.total_gpu_memory_in_mi_b,
            g.gpus.first().map(|x| x.manufacturer.as_str()).unwrap_or(""),
            g.gpus.first().map(|x| x.name.as_str()).unwrap_or(""),
        ),
        None => (0, 0, "", ""),
    };
    let net = &info.network_info;
    let baselines: Vec<f64> = net
        .network_cards
        .iter()
        .filter_map(|c| c.baseline_bandwidth_in_gbps)
        .collect();
    let gbps = if baselines.is_empty() {
        spot_core::instance_type::network_gbps_from_text(&net.network_performance)
    } else {
        baselines.iter().sum()
    };
    let b = |v: bool| if v { "1" } else { "0" };
    Ok([
        name.to_owned(),
        archs,
        checked(
            name,
            "cpu manufacturer",
            info.processor_info.manufacturer.as_deref().unwrap_or(""),
        )?
        .to_owned(),
        info.v_cpu_info.default_v_cpus.to_string(),
        info.memory_info.size_in_mi_b.to_string(),
        gpus.to_string(),
        gpu_mem.to_string(),
        checked(name, "gpu manufacturer", gpu_maker)?.to_owned(),
        checked(name, "gpu model", gpu_model)?.to_owned(),
        net.maximum_network_interfaces.to_string(),
        net.ipv4_addresses_per_interface.to_string(),
        checked(name, "hypervisor", info.hypervisor.as_deref().unwrap_or(""))?.to_owned(),
        b(info.burstable_performance_supported).to_owned(),
        b(info.bare_metal).to_owned(),
        b(info.current_generation).to_owned(),
        checked(name, "network performance", &net.network_performance)?.to_owned(),
        format_gbps(gbps),
        info.instance_storage_info
            .as_ref()
            .map(|s| s.total_size_in_g_b)
            .unwrap_or(0)
            .to_string(),
        usage,
    ]
    .join(","))
}

/// Gbps with at most three decimals and no trailing zeros (`0.75`, `12.5`, `100`).
fn format_gbps(gbps: f64) -> String {
    let text = format!("{gbps:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_layout() {
        let set: BTreeSet<usize> = [0, 5, 8].into_iter().collect();
        assert_eq!(bitmap_hex(&set, 9), "848");
        assert_eq!(format_gbps(133.32000000001), "133.32");
        assert_eq!(format_gbps(100.0), "100");
    }
}
