//! `spot-select`: pick EC2 instance types by resources, price and placement, and print
//! them as a list, a table, JSON, a Karpenter `NodePool` or kOps `InstanceGroup`s.
//!
//! Offline by default (the embedded catalog and price tables); `--live` reads EC2.
//! Exit codes: 0 on success (also when nothing matches: the reason goes to stderr), 2 on
//! bad input, 1 when reading data fails.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use spot_aws::config::Endpoint;
use spot_aws::select::live::LiveCatalog;
use spot_aws::select::output::{self, InstanceGroupOptions, NodePoolOptions, SpotAllocationStrategy};
use spot_core::catalog::Catalog;
use spot_core::instance_type::{Architecture, CapacityType, InstanceType};
use spot_core::price::{CsvPrices, EMBEDDED_SPOT_SEED, OfflinePrices, PriceSource, SpotAdvisor};
use spot_core::select::ranges::{format_gib, format_ratio};
use spot_core::select::{
    self, Criteria, NameRegex, Range, Selection, SortDirection, SortKey, ZoneAvailability, flexible, ranges,
};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One type per line.
    Simple,
    /// Type, vCPUs, memory.
    Table,
    /// Every attribute, prices and zones.
    TableWide,
    /// Comma-separated names.
    OneLine,
    /// A JSON array.
    Json,
    /// A Karpenter v1 NodePool.
    Nodepool,
    /// kOps InstanceGroups (see --ig-count).
    Instancegroup,
}

fn size(text: &str) -> Result<f64, String> {
    ranges::parse_size_mib(text).map_err(|e| e.to_string())
}

fn ratio(text: &str) -> Result<f64, String> {
    ranges::parse_ratio(text).map_err(|e| e.to_string())
}

fn decimal(text: &str) -> Result<f64, String> {
    ranges::parse_non_negative(text).map_err(|e| e.to_string())
}

fn regex(text: &str) -> Result<NameRegex, String> {
    NameRegex::new(text).map_err(|e| e.to_string())
}

fn architecture(text: &str) -> Result<Architecture, String> {
    text.parse::<Architecture>().map_err(|e| e.to_string())
}

fn capacity_type(text: &str) -> Result<CapacityType, String> {
    text.parse::<CapacityType>().map_err(|e| e.to_string())
}

fn sort_key(text: &str) -> Result<SortKey, String> {
    text.parse::<SortKey>().map_err(|e| e.to_string())
}

fn sort_direction(text: &str) -> Result<SortDirection, String> {
    text.parse::<SortDirection>().map_err(|e| e.to_string())
}

fn strategy(text: &str) -> Result<SpotAllocationStrategy, String> {
    text.parse::<SpotAllocationStrategy>().map_err(|e| e.to_string())
}

/// Select EC2 instance types.
///
/// Numeric filters take an exact value (--X) or an inclusive range (--X-min, --X-max; a lone
/// -max means from 0). Types without GPUs or local storage count as 0, so --gpus-max 2
/// keeps them. Allow/deny lists are regular expressions matched against the WHOLE name:
/// `m5.*` matches m5.large and m5d.large, `large` matches nothing.
#[derive(Debug, Parser)]
#[command(name = "spot-select", version)]
struct Cli {
    /// vCPUs (exact).
    #[arg(long, short = 'c', conflicts_with_all = ["vcpus_min", "vcpus_max"])]
    vcpus: Option<u32>,
    /// Minimum vCPUs.
    #[arg(long)]
    vcpus_min: Option<u32>,
    /// Maximum vCPUs.
    #[arg(long)]
    vcpus_max: Option<u32>,
    /// Memory (GiB by default; 512mb, 4gb, 4GiB, 1tb).
    #[arg(long, short = 'm', value_parser = size, conflicts_with_all = ["memory_min", "memory_max"])]
    memory: Option<f64>,
    /// Minimum memory.
    #[arg(long, value_parser = size)]
    memory_min: Option<f64>,
    /// Maximum memory.
    #[arg(long, value_parser = size)]
    memory_max: Option<f64>,
    /// vCPU-to-memory ratio VCPUS:GIB such as 1:4, matched within 1%.
    #[arg(long, value_parser = ratio, conflicts_with_all = ["vcpus_to_memory_ratio_min", "vcpus_to_memory_ratio_max"])]
    vcpus_to_memory_ratio: Option<f64>,
    /// Minimum vCPU-to-memory ratio.
    #[arg(long, value_parser = ratio)]
    vcpus_to_memory_ratio_min: Option<f64>,
    /// Maximum vCPU-to-memory ratio.
    #[arg(long, value_parser = ratio)]
    vcpus_to_memory_ratio_max: Option<f64>,
    /// GPUs.
    #[arg(long, short = 'g', conflicts_with_all = ["gpus_min", "gpus_max"])]
    gpus: Option<u32>,
    /// Minimum GPUs.
    #[arg(long)]
    gpus_min: Option<u32>,
    /// Maximum GPUs.
    #[arg(long)]
    gpus_max: Option<u32>,
    /// Total GPU memory (sizes as --memory).
    #[arg(long, value_parser = size, conflicts_with_all = ["gpu_memory_total_min", "gpu_memory_total_max"])]
    gpu_memory_total: Option<f64>,
    /// Minimum total GPU memory.
    #[arg(long, value_parser = size)]
    gpu_memory_total_min: Option<f64>,
    /// Maximum total GPU memory.
    #[arg(long, value_parser = size)]
    gpu_memory_total_max: Option<f64>,
    /// GPU manufacturer (NVIDIA, AMD, ...), case-insensitive.
    #[arg(long)]
    gpu_manufacturer: Option<String>,
    /// GPU model (T4, A10G, ...), case-insensitive.
    #[arg(long)]
    gpu_model: Option<String>,
    /// CPU architecture: x86_64 (amd64), arm64, i386, x86_64_mac, arm64_mac.
    #[arg(long, short = 'a', value_parser = architecture)]
    cpu_architecture: Option<Architecture>,
    /// CPU manufacturer: intel, amd, aws, apple.
    #[arg(long)]
    cpu_manufacturer: Option<String>,
    /// Usage class: spot or on-demand (also picks the price --price-per-hour compares).
    #[arg(long, short = 'u', value_parser = capacity_type)]
    usage_class: Option<CapacityType>,
    /// Burstable (T family) types only, or none with =false.
    #[arg(long, short = 'b', num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    burst_support: Option<bool>,
    /// Hypervisor: nitro or xen (bare metal has none).
    #[arg(long)]
    hypervisor: Option<String>,
    /// Bare-metal types only, or none with =false.
    #[arg(long, alias = "baremetal", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    bare_metal: Option<bool>,
    /// EC2's current-generation flag, as recorded in the data.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    current_generation: Option<bool>,
    /// Baseline network bandwidth in Gbps.
    #[arg(long, value_parser = decimal, conflicts_with_all = ["network_performance_min", "network_performance_max"])]
    network_performance: Option<f64>,
    /// Minimum network bandwidth in Gbps.
    #[arg(long, value_parser = decimal)]
    network_performance_min: Option<f64>,
    /// Maximum network bandwidth in Gbps.
    #[arg(long, value_parser = decimal)]
    network_performance_max: Option<f64>,
    /// Maximum network interfaces.
    #[arg(long, conflicts_with_all = ["network_interfaces_min", "network_interfaces_max"])]
    network_interfaces: Option<u32>,
    /// Minimum of the maximum network interfaces.
    #[arg(long)]
    network_interfaces_min: Option<u32>,
    /// Maximum of the maximum network interfaces.
    #[arg(long)]
    network_interfaces_max: Option<u32>,
    /// Local instance storage (sizes as --memory; EC2's GB read as GiB).
    #[arg(long, value_parser = size, conflicts_with_all = ["instance_storage_min", "instance_storage_max"])]
    instance_storage: Option<f64>,
    /// Minimum local instance storage.
    #[arg(long, value_parser = size)]
    instance_storage_min: Option<f64>,
    /// Maximum local instance storage.
    #[arg(long, value_parser = size)]
    instance_storage_max: Option<f64>,
    /// Price in USD per hour: on-demand, or spot with --usage-class spot. Unpriced types never match.
    #[arg(long, value_parser = decimal, conflicts_with_all = ["price_per_hour_min", "price_per_hour_max"])]
    price_per_hour: Option<f64>,
    /// Minimum price per hour.
    #[arg(long, value_parser = decimal)]
    price_per_hour_min: Option<f64>,
    /// Maximum price per hour.
    #[arg(long, value_parser = decimal)]
    price_per_hour_max: Option<f64>,
    /// Keep names fully matching this regular expression.
    #[arg(long, value_parser = regex)]
    allow_list: Option<NameRegex>,
    /// Drop names fully matching this regular expression.
    #[arg(long, value_parser = regex)]
    deny_list: Option<NameRegex>,
    /// Exact instance type names (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    instance_types: Vec<String>,
    /// Families such as m5,c6i (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    instance_family: Vec<String>,
    /// Categories such as m,c,r (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    instance_category: Vec<String>,
    /// Generation (the number in the family name).
    #[arg(long, conflicts_with_all = ["instance_generation_min", "instance_generation_max"])]
    instance_generation: Option<u32>,
    /// Minimum generation.
    #[arg(long)]
    instance_generation_min: Option<u32>,
    /// Maximum generation.
    #[arg(long)]
    instance_generation_max: Option<u32>,
    /// Region (offline default us-east-1; with --live, the AWS chain's region).
    #[arg(long, short = 'r')]
    region: Option<String>,
    /// Zones the types must ALL be offered in (comma-separated or repeated).
    #[arg(long, short = 'z', value_delimiter = ',')]
    availability_zones: Vec<String>,
    /// Keep the first N results after sorting (default: all).
    #[arg(long)]
    max_results: Option<usize>,
    /// Sort field: name, vcpus, memory, gpus, gpu-memory-total, network, network-interfaces,
    /// instance-storage, generation, price (on-demand), spot-price.
    #[arg(long, value_parser = sort_key, default_value = "name")]
    sort_by: SortKey,
    /// Sort direction: ascending (asc) or descending (desc).
    #[arg(long, value_parser = sort_direction, default_value = "ascending")]
    sort_direction: SortDirection,
    /// Diversified general-purpose set: x86_64, no bare metal, not burstable, generation 5+,
    /// families `[cmr][3-9][agi]?`, 4 vCPUs unless --vcpus/--memory, ratio 1:2 to 1:8 unless
    /// given. Only fills filters you left unset.
    #[arg(long)]
    flexible: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Simple)]
    output: Format,
    /// NodePool / InstanceGroup name (groups are NAME1..NAMEn when --ig-count > 1).
    #[arg(long, default_value = "spot")]
    name: String,
    /// Number of InstanceGroups, split by vCPU-to-memory ratio 1:2, 1:4, 1:8, ... as kOps does.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    ig_count: u32,
    /// InstanceGroup minSize.
    #[arg(long, default_value_t = 1)]
    min_size: u32,
    /// InstanceGroup maxSize.
    #[arg(long, default_value_t = 10)]
    max_size: u32,
    /// kOps cluster name for the kops.k8s.io/cluster label.
    #[arg(long)]
    cluster_name: Option<String>,
    /// InstanceGroup spot allocation strategy: price-capacity-optimized or capacity-optimized.
    #[arg(long, value_parser = strategy, default_value = "price-capacity-optimized")]
    spot_allocation_strategy: SpotAllocationStrategy,
    /// On-demand prices from a CSV file (instance_type,usd_per_hour); spot prices are derived
    /// from them with the offline advisor data.
    #[arg(long, value_name = "FILE.csv")]
    prices: Option<std::path::PathBuf>,
    /// Read types, offerings and spot prices from EC2 (standard AWS credential chain).
    #[arg(long)]
    live: bool,
    /// EC2 endpoint override for --live (moto, LocalStack).
    #[arg(long, requires = "live")]
    endpoint_url: Option<String>,
}

/// A failure, as the message printed, and its exit code.
enum Failure {
    /// Bad input: exit 2.
    Usage(String),
    /// Data could not be read: exit 1.
    Runtime(String),
}

impl Cli {
    fn criteria(&self) -> Result<Criteria, ranges::Error> {
        let mut c = Criteria {
            vcpus: Range::from_flags("vcpus", self.vcpus, self.vcpus_min, self.vcpus_max)?,
            memory_mib: Range::from_flags_shown(
                "memory",
                self.memory,
                self.memory_min,
                self.memory_max,
                format_gib,
            )?,
            vcpus_to_memory_ratio: Range::from_flags_shown(
                "vcpus-to-memory-ratio",
                self.vcpus_to_memory_ratio,
                self.vcpus_to_memory_ratio_min,
                self.vcpus_to_memory_ratio_max,
                format_ratio,
            )?,
            gpus: Range::from_flags("gpus", self.gpus, self.gpus_min, self.gpus_max)?,
            gpu_memory_total_mib: Range::from_flags_shown(
                "gpu-memory-total",
                self.gpu_memory_total,
                self.gpu_memory_total_min,
                self.gpu_memory_total_max,
                format_gib,
            )?,
            gpu_manufacturer: self.gpu_manufacturer.clone(),
            gpu_model: self.gpu_model.clone(),
            cpu_architecture: self.cpu_architecture,
            cpu_manufacturer: self.cpu_manufacturer.clone(),
            usage_class: self.usage_class,
            burst_support: self.burst_support,
            hypervisor: self.hypervisor.clone(),
            bare_metal: self.bare_metal,
            current_generation: self.current_generation,
            network_performance_gbps: Range::from_flags(
                "network-performance",
                self.network_performance,
                self.network_performance_min,
                self.network_performance_max,
            )?,
            network_interfaces: Range::from_flags(
                "network-interfaces",
                self.network_interfaces,
                self.network_interfaces_min,
                self.network_interfaces_max,
            )?,
            instance_storage_mib: Range::from_flags_shown(
                "instance-storage",
                self.instance_storage,
                self.instance_storage_min,
                self.instance_storage_max,
                format_gib,
            )?,
            price_per_hour: Range::from_flags(
                "price-per-hour",
                self.price_per_hour,
                self.price_per_hour_min,
                self.price_per_hour_max,
            )?,
            allow_list: self.allow_list.clone(),
            deny_list: self.deny_list.clone(),
            instance_types: self.instance_types.clone(),
            instance_families: self.instance_family.clone(),
            instance_categories: self.instance_category.clone(),
            instance_generation: Range::from_flags(
                "instance-generation",
                self.instance_generation,
                self.instance_generation_min,
                self.instance_generation_max,
            )?,
            region: self.region.clone(),
            availability_zones: self.availability_zones.clone(),
            max_results: self.max_results,
            sort_by: self.sort_by,
            sort_direction: self.sort_direction,
        };
        if self.flexible {
            flexible::apply(&mut c);
        }
        Ok(c)
    }

    fn capacity_type(&self) -> CapacityType {
        self.usage_class.unwrap_or(CapacityType::Spot)
    }
}

/// The data a selection runs on.
struct Data<'a> {
    types: &'a [InstanceType],
    offerings: &'a dyn ZoneAvailability,
    prices: &'a dyn PriceSource,
}

fn offline_prices(cli: &Cli) -> Result<Option<OfflinePrices>, Failure> {
    let Some(path) = &cli.prices else { return Ok(None) };
    let csv = CsvPrices::from_path(path)
        .map_err(|e| Failure::Usage(format!("--prices {}: {e}", path.display())))?;
    let catalog = Catalog::embedded();
    Ok(Some(OfflinePrices::new(
        csv,
        SpotAdvisor::generate(catalog, EMBEDDED_SPOT_SEED),
        catalog,
    )))
}

fn fetch_live(cli: &Cli) -> Result<LiveCatalog, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let endpoint = Endpoint {
            region: cli.region.clone(),
            url: cli.endpoint_url.clone(),
        };
        let config = spot_aws::config::load(&endpoint).await;
        let Some(region) = config.region().map(|r| r.to_string()) else {
            return Err(Failure::Usage(
                "--live needs a region: pass --region or set AWS_REGION".to_owned(),
            ));
        };
        let client = aws_sdk_ec2::Client::new(&config);
        LiveCatalog::fetch(&client, &region)
            .await
            .map_err(|e| Failure::Runtime(format!("reading EC2 in {region}: {e}")))
    })
}

fn ig_options(cli: &Cli) -> InstanceGroupOptions {
    InstanceGroupOptions {
        cluster: cli.cluster_name.clone(),
        min_size: cli.min_size,
        max_size: cli.max_size,
        capacity_type: cli.capacity_type(),
        spot_allocation_strategy: cli.spot_allocation_strategy,
        subnets: cli.availability_zones.clone(),
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    if cli.min_size > cli.max_size {
        return Err(Failure::Usage(format!(
            "--min-size {} is greater than --max-size {}",
            cli.min_size, cli.max_size
        )));
    }
    let mut criteria = cli.criteria().map_err(|e| Failure::Usage(e.to_string()))?;
    let csv_prices = offline_prices(cli)?;
    let offline: &dyn PriceSource = match &csv_prices {
        Some(p) => p,
        None => OfflinePrices::embedded(),
    };
    let live = if cli.live { Some(fetch_live(cli)?) } else { None };
    let live_prices = live.as_ref().map(|l| l.prices(offline));
    let data = match (&live, &live_prices) {
        (Some(l), Some(p)) => {
            criteria.region = Some(l.region.clone());
            Data {
                types: &l.types,
                offerings: &l.offerings,
                prices: p,
            }
        }
        _ => {
            let catalog = Catalog::embedded();
            Data {
                types: catalog.types(),
                offerings: catalog,
                prices: offline,
            }
        }
    };

    let run_one = |c: &Criteria| -> Result<Selection, Failure> {
        select::select(c, data.types, data.offerings, data.prices).map_err(|e| Failure::Usage(e.to_string()))
    };
    let note = |s: &Selection, label: &str| {
        if s.truncated > 0 {
            eprintln!(
                "NOTE: {label}{} entries were truncated, increase --max-results to see more",
                s.truncated
            );
        }
        if let Some(why) = &s.explanation {
            eprintln!("{label}{why}");
        }
    };

    let text = if cli.output == Format::Instancegroup {
        let count = cli.ig_count as usize;
        let mut groups = Vec::new();
        for (i, c) in flexible::split_by_ratio(&criteria, count).iter().enumerate() {
            let name = if count == 1 {
                cli.name.clone()
            } else {
                format!("{}{}", cli.name, i + 1)
            };
            let s = run_one(c)?;
            note(&s, &format!("{name}: "));
            groups.push((name, s.selected));
        }
        output::instance_groups(&groups, &ig_options(cli)).map_err(|e| Failure::Runtime(e.to_string()))?
    } else {
        let s = run_one(&criteria)?;
        note(&s, "");
        let items = &s.selected;
        if items.is_empty() {
            String::new()
        } else {
            match cli.output {
                Format::Simple => output::simple(items),
                Format::Table => output::table(items),
                Format::TableWide => output::table_wide(items),
                Format::OneLine => output::one_line(items),
                Format::Json => output::json(items).map_err(|e| Failure::Runtime(e.to_string()))?,
                Format::Nodepool => output::nodepool(
                    items,
                    &NodePoolOptions {
                        name: cli.name.clone(),
                        capacity_type: cli.capacity_type(),
                        zones: cli.availability_zones.clone(),
                    },
                )
                .map_err(|e| Failure::Runtime(e.to_string()))?,
                Format::Instancegroup => {
                    output::instance_groups(&[(cli.name.clone(), items.clone())], &ig_options(cli))
                        .map_err(|e| Failure::Runtime(e.to_string()))?
                }
            }
        }
    };
    print!("{text}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
