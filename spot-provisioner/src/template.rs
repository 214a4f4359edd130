//! What the provisioner can launch: an [`InstanceCatalog`] (instance types, the zones that
//! offer them, prices and the allocatable model) turned, per NodePool and node class, into
//! the scheduler's [`NodePoolTemplate`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use spot_core::allocatable::AllocatableModel;
use spot_core::catalog::Catalog;
use spot_core::instance_type::{CapacityType, InstanceType, Offering};
use spot_core::labels;
use spot_core::offerings::UnavailableOfferings;
use spot_core::price::{OfflinePrices, PriceSource};
use spot_core::resources::Resources;
use spot_core::scheduling::{InstanceTypeOption, NODES_LIMIT, NodePoolTemplate};
use spot_core::select::ZoneAvailability;

use crate::api::{NodeClaim, NodePool, RequirementOperator, SpotNodeClass};
use crate::cluster::Snapshot;

/// Errors of building templates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NodePool or node class is invalid.
    #[error(transparent)]
    Api(#[from] crate::api::Error),
    /// The NodePool's class does not exist.
    #[error("NodePool {pool}: spec.template.spec.nodeClassRef.name {class:?} does not exist")]
    MissingClass {
        /// The NodePool.
        pool: String,
        /// The class name.
        class: String,
    },
    /// The region has no zones in the catalog.
    #[error("region {0:?} has no availability zones in the catalog")]
    Region(String),
}

/// The instance types a cloud offers in a region, where, and at what price.
pub struct InstanceCatalog {
    /// The region.
    pub region: String,
    /// Every instance type.
    pub types: Vec<Arc<InstanceType>>,
    /// Which zones offer which type.
    pub zones: Arc<dyn ZoneAvailability + Send + Sync>,
    /// On-demand and spot prices.
    pub prices: Arc<dyn PriceSource>,
    /// The allocatable model before node-class kubelet settings.
    pub model: AllocatableModel,
}

impl std::fmt::Debug for InstanceCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceCatalog")
            .field("region", &self.region)
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

impl InstanceCatalog {
    /// The embedded catalog and offline prices for a region.
    pub fn embedded(region: &str) -> Result<InstanceCatalog, Error> {
        Self::with_prices(region, Arc::new(OfflinePrices::embedded()))
    }

    /// The embedded catalog with another price source (a simulated market, a CSV).
    pub fn with_prices(region: &str, prices: Arc<dyn PriceSource>) -> Result<InstanceCatalog, Error> {
        let catalog = Catalog::embedded();
        if catalog.zones(region).map(|z| z.is_empty()).unwrap_or(true) {
            return Err(Error::Region(region.to_owned()));
        }
        Ok(InstanceCatalog {
            region: region.to_owned(),
            types: catalog.types().iter().cloned().map(Arc::new).collect(),
            zones: Arc::new(catalog.clone()),
            prices,
            model: AllocatableModel::default(),
        })
    }

    /// The launchable options in the allowed zones (all the region's when empty), with the
    /// unavailable offerings marked. Types without any priced offering are left out.
    pub fn options(
        &self,
        allowed_zones: &[String],
        model: &AllocatableModel,
        unavailable: &UnavailableOfferings,
    ) -> Vec<Arc<InstanceTypeOption>> {
        let mut out = Vec::new();
        for t in &self.types {
            let mut offerings = Vec::new();
            for zone in self.zones.offered_zones(&self.region, &t.name) {
                if !allowed_zones.is_empty() && !allowed_zones.contains(&zone) {
                    continue;
                }
                if t.spot_supported
                    && let Some(price) = self.prices.spot(&zone, &t.name)
                {
                    offerings.push(Offering {
                        zone: zone.clone(),
                        capacity_type: CapacityType::Spot,
                        price,
                        available: true,
                    });
                }
                if t.on_demand_supported
                    && let Some(price) = self.prices.on_demand(&self.region, &t.name)
                {
                    offerings.push(Offering {
                        zone: zone.clone(),
                        capacity_type: CapacityType::OnDemand,
                        price,
                        available: true,
                    });
                }
            }
            if offerings.is_empty() {
                continue;
            }
            unavailable.apply(&t.name, &mut offerings);
            if let Ok(o) = InstanceTypeOption::new(t.clone(), model, offerings) {
                out.push(Arc::new(o));
            }
        }
        out
    }
}

/// What a NodePool already uses: capacity of its nodes and in-flight claims, and their count.
///
/// A claim not launched yet counts as the largest capacity among the instance types it lists
/// (per resource, Karpenter's "subtract max"), so a loop that runs before the launch is
/// recorded cannot push the pool over its limits whichever type EC2 then picks. Without a
/// known type it counts as its requests.
pub fn usage(snapshot: &Snapshot, pool: &str, catalog: &InstanceCatalog) -> Resources {
    let mut used = Resources::default();
    let mut nodes = 0;
    let parse = |m: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        Resources::from_pairs(m.iter().map(|(k, q)| (k.as_str(), q.0.as_str()))).unwrap_or_default()
    };
    for n in &snapshot.nodes {
        if n.labels().get(labels::NODE_POOL).map(String::as_str) != Some(pool) {
            continue;
        }
        nodes += 1;
        if let Some(c) = n.status.as_ref().and_then(|s| s.capacity.as_ref()) {
            used = used.checked_add(&parse(c)).unwrap_or(used);
        }
    }
    for c in &snapshot.claims {
        if c.labels().get(labels::NODE_POOL).map(String::as_str) != Some(pool)
            || snapshot.node_of(c).is_some()
        {
            continue;
        }
        nodes += 1;
        let cap = c
            .status
            .as_ref()
            .filter(|s| !s.capacity.is_empty())
            .map(|s| parse(&s.capacity))
            .or_else(|| largest_listed(c, catalog))
            .unwrap_or_else(|| c.requests().unwrap_or_default());
        used = used.checked_add(&cap).unwrap_or(used);
    }
    used.with_extended(NODES_LIMIT, nodes)
}

/// The per-resource maximum capacity of the catalog types a claim's
/// `node.kubernetes.io/instance-type In` requirement lists, if it lists any the catalog knows.
fn largest_listed(claim: &NodeClaim, catalog: &InstanceCatalog) -> Option<Resources> {
    let listed: std::collections::HashSet<&str> = claim
        .spec
        .requirements
        .iter()
        .filter(|r| r.key == labels::INSTANCE_TYPE && r.operator == RequirementOperator::In)
        .flat_map(|r| r.values.iter().map(String::as_str))
        .collect();
    catalog
        .types
        .iter()
        .filter(|t| listed.contains(t.name.as_str()))
        .map(|t| catalog.model.capacity_resources(t))
        .reduce(|a, b| a.max(&b))
}

/// The template of one NodePool.
pub fn template(
    pool: &NodePool,
    class: Option<&SpotNodeClass>,
    catalog: &InstanceCatalog,
    unavailable: &UnavailableOfferings,
    used: &Resources,
) -> Result<NodePoolTemplate, Error> {
    pool.validate()?;
    let name = pool.name_any();
    let (zones, model) = match class {
        Some(c) => (c.zones(), c.allocatable_model(&catalog.model)?),
        None => (Vec::new(), catalog.model.clone()),
    };
    let requirements = pool.requirements()?;
    let options = catalog.options(&zones, &model, unavailable);
    let mut t = NodePoolTemplate::new(name, options);
    t.weight = pool.weight();
    t.requirements = t.requirements.intersect(&requirements);
    let labels = pool.spec.template.metadata.labels.clone();
    t.requirements = t
        .requirements
        .intersect(&spot_core::requirements::Requirements::from_labels(&labels));
    t.labels = labels;
    let (taints, startup) = pool.taints()?;
    t.taints = taints;
    t.startup_taints = startup;
    t.limits = pool.limits()?.map(|l| l.saturating_sub(used));
    Ok(t)
}

/// Every NodePool's template; pools that cannot be built are returned apart with the
/// reason (they are skipped, as Karpenter skips pools that are not ready).
pub fn templates(
    snapshot: &Snapshot,
    catalog: &InstanceCatalog,
    unavailable: &UnavailableOfferings,
) -> (Vec<NodePoolTemplate>, Vec<(String, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for pool in &snapshot.nodepools {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pool.name_any();
        let class_name = &pool.spec.template.spec.node_class_ref.name;
        let class = snapshot.nodeclasses.iter().find(|c| &c.name_any() == class_name);
        if class.is_none() && !snapshot.nodeclasses.is_empty() {
            bad.push((
                name.clone(),
                Error::MissingClass {
                    pool: name,
                    class: class_name.clone(),
                }
                .to_string(),
            ));
            continue;
        }
        match template(
            pool,
            class,
            catalog,
            unavailable,
            &usage(snapshot, &name, catalog),
        ) {
            Ok(t) => ok.push(t),
            Err(e) => bad.push((name, e.to_string())),
        }
    }
    (ok, bad)
}
