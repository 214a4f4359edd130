//! Instance-to-node resolution: which Kubernetes node an EC2 instance is, and whether this
//! cluster manages it.
//!
//! [`InstanceResolver`] describes instances in batches of up to 100 ids (following
//! pagination), and keeps what it learned for a short time so that the burst of events one
//! interruption produces (rebalance, then interruption warning, then state change) costs one
//! DescribeInstances call.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, Instance, InstanceLifecycleType};
use spot_core::instance_type::CapacityType;
use tokio::time::Instant;

use crate::sqs::messages::is_instance_id;

/// The most instance ids one DescribeInstances call asks for.
pub const MAX_IDS_PER_CALL: usize = 100;
/// The tag Auto Scaling puts on the instances of a group.
pub const ASG_NAME_TAG: &str = "aws:autoscaling:groupName";
/// How long lookups are cached unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Errors of instance resolution.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The DescribeInstances call failed.
    #[error("DescribeInstances failed: {0}")]
    Describe(String),
    /// EC2 returned an instance without a field every instance has.
    #[error("DescribeInstances returned instance {instance_id} without {field}")]
    Incomplete {
        /// The instance (or `?` when the id itself is missing).
        instance_id: String,
        /// The missing field.
        field: &'static str,
    },
    /// The page size is outside what DescribeInstances accepts.
    #[error("DescribeInstances page size {0} is outside 5..=1000")]
    PageSize(i32),
}

/// The tag that marks the instances this cluster manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedTag {
    /// The tag key.
    pub key: String,
    /// The value the tag must have; `None` accepts any value.
    pub value: Option<String>,
}

impl ManagedTag {
    /// A tag that must be present with any value.
    pub fn key(key: impl Into<String>) -> Self {
        ManagedTag {
            key: key.into(),
            value: None,
        }
    }

    /// A tag that must be present with `value`.
    pub fn key_value(key: impl Into<String>, value: impl Into<String>) -> Self {
        ManagedTag {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// Whether `tags` carry this tag.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        match (tags.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(found), Some(wanted)) => found == wanted,
        }
    }
}

/// What EC2 says about one instance, in the terms a node handler needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance id.
    pub instance_id: String,
    /// The private DNS name: the node name under the default EKS naming. `None` when EC2
    /// reports none (a stopped or terminated instance, or a VPC without DNS hostnames).
    pub node_name: Option<String>,
    /// The Kubernetes provider id, `aws:///<zone>/<instance-id>`.
    pub provider_id: String,
    /// The availability zone.
    pub zone: String,
    /// The instance type.
    pub instance_type: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// The EC2 state name (`running`, `terminated`, ...).
    pub state: String,
    /// The tags.
    pub tags: BTreeMap<String, String>,
    /// Whether the instance carries the managed tag (always true without a managed tag).
    pub managed: bool,
}

impl InstanceInfo {
    /// The Auto Scaling group, from the `aws:autoscaling:groupName` tag.
    pub fn asg_name(&self) -> Option<&str> {
        self.tags.get(ASG_NAME_TAG).map(String::as_str)
    }

    /// Reads an SDK instance; `managed_tag` decides [`InstanceInfo::managed`].
    pub fn from_ec2(instance: &Instance, managed_tag: Option<&ManagedTag>) -> Result<Self, Error> {
        let instance_id = instance
            .instance_id()
            .filter(|id| !id.is_empty())
            .ok_or(Error::Incomplete {
                instance_id: "?".into(),
                field: "InstanceId",
            })?
            .to_owned();
        let missing = |field| Error::Incomplete {
            instance_id: instance_id.clone(),
            field,
        };
        let zone = instance
            .placement()
            .and_then(|p| p.availability_zone())
            .filter(|z| !z.is_empty())
            .ok_or_else(|| missing("Placement.AvailabilityZone"))?
            .to_owned();
        let instance_type = instance
            .instance_type()
            .ok_or_else(|| missing("InstanceType"))?
            .as_str()
            .to_owned();
        let state = instance
            .state()
            .and_then(|s| s.name())
            .ok_or_else(|| missing("State.Name"))?
            .as_str()
            .to_owned();
        let capacity_type = match instance.instance_lifecycle() {
            Some(InstanceLifecycleType::Spot) => CapacityType::Spot,
            _ => CapacityType::OnDemand,
        };
        let tags: BTreeMap<String, String> = instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect();
        let managed = managed_tag.is_none_or(|tag| tag.matches(&tags));
        Ok(InstanceInfo {
            provider_id: format!("aws:///{zone}/{instance_id}"),
            node_name: instance
                .private_dns_name()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            instance_id,
            zone,
            instance_type,
            capacity_type,
            state,
            tags,
            managed,
        })
    }
}

/// The result of a lookup: the instances EC2 knows, and the ids it does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Known instances by id.
    pub found: BTreeMap<String, InstanceInfo>,
    /// Ids EC2 does not know (or that are not instance ids), in request order.
    pub missing: Vec<String>,
}

impl Resolution {
    /// The instance `id`, when known.
    pub fn get(&self, id: &str) -> Option<&InstanceInfo> {
        self.found.get(id)
    }
}

/// Resolves instance ids to node names and attributes through EC2 DescribeInstances, with a
/// short-lived cache (tokio time, so paused-time tests control it).
#[derive(Debug)]
pub struct InstanceResolver {
    client: Client,
    ttl: Duration,
    page_size: i32,
    managed_tag: Option<ManagedTag>,
    cache: Mutex<HashMap<String, (Instant, InstanceInfo)>>,
    calls: AtomicU64,
}

impl InstanceResolver {
    /// A resolver using `client`, caching for [`DEFAULT_TTL`], without a managed tag.
    pub fn new(client: Client) -> Self {
        InstanceResolver {
            client,
            ttl: DEFAULT_TTL,
            page_size: 1000,
            managed_tag: None,
            cache: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// Caches lookups for `ttl` (zero disables the cache).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Reports instances without `tag` as unmanaged.
    pub fn with_managed_tag(mut self, tag: ManagedTag) -> Self {
        self.managed_tag = Some(tag);
        self
    }

    /// Sets DescribeInstances' `MaxResults` (5..=1000; default 1000).
    pub fn with_page_size(mut self, page_size: i32) -> Result<Self, Error> {
        if !(5..=1000).contains(&page_size) {
            return Err(Error::PageSize(page_size));
        }
        self.page_size = page_size;
        Ok(self)
    }

    /// How many DescribeInstances requests (pages) were sent so far.
    pub fn describe_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Forgets every cached lookup.
    pub fn clear_cache(&self) {
        self.lock_cache().clear();
    }

    fn lock_cache(&self) -> MutexGuard<'_, HashMap<String, (Instant, InstanceInfo)>> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks up one instance.
    pub async fn resolve_one(&self, instance_id: &str) -> Result<Option<InstanceInfo>, Error> {
        let mut resolution = self.resolve(&[instance_id.to_owned()]).await?;
        Ok(resolution.found.remove(instance_id))
    }

    /// Looks up instances: cached ones from the cache, the others with DescribeInstances in
    /// batches of [`MAX_IDS_PER_CALL`]. Unknown ids (never cached, so that an instance EC2
    /// does not show yet is found on the next try) and strings that are not instance ids are
    /// reported as missing.
    pub async fn resolve(&self, instance_ids: &[String]) -> Result<Resolution, Error> {
        let mut resolution = Resolution::default();
        let mut wanted: Vec<String> = Vec::new();
        {
            let mut cache = self.lock_cache();
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            for id in instance_ids {
                if resolution.found.contains_key(id) || wanted.contains(id) {
                    continue;
                }
                if let Some((_, info)) = cache.get(id) {
                    resolution.found.insert(id.clone(), info.clone());
                } else if is_instance_id(id) {
                    wanted.push(id.clone());
                }
            }
        }
        for chunk in wanted.chunks(MAX_IDS_PER_CALL) {
            let described = self.describe(chunk).await?;
            let now = Instant::now();
            let mut cache = self.lock_cache();
            for id in chunk {
                if let Some(info) = described.get(id) {
                    if !self.ttl.is_zero() {
                        cache.insert(id.clone(), (now, info.clone()));
                    }
                    resolution.found.insert(id.clone(), info.clone());
                }
            }
        }
        for id in instance_ids {
            if !resolution.found.contains_key(id) && !resolution.missing.contains(id) {
                resolution.missing.push(id.clone());
            }
        }
        Ok(resolution)
    }

    /// One batch: DescribeInstances filtered on `instance-id` (a filter, not `InstanceIds`,
    /// so that one unknown id does not fail the whole call), all pages.
    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, InstanceInfo>, Error> {
        let filter = Filter::builder()
            .name("instance-id")
            .set_values(Some(ids.to_vec()))
            .build();
        let mut pages = self
            .client
            .describe_instances()
            .filters(filter)
            .max_results(self.page_size)
            .into_paginator()
            .send();
        let mut out = HashMap::new();
        while let Some(page) = pages.next().await {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let page = page.map_err(|e| Error::Describe(DisplayErrorContext(&e).to_string()))?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let info = InstanceInfo::from_ec2(instance, self.managed_tag.as_ref())?;
                out.insert(info.instance_id.clone(), info);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{InstanceState, InstanceStateName, InstanceType, Placement, Tag};

    fn instance(lifecycle: Option<InstanceLifecycleType>) -> Instance {
        Instance::builder()
            .instance_id("i-0123456789abcdef0")
            .private_dns_name("ip-10-0-0-1.ec2.internal")
            .placement(Placement::builder().availability_zone("us-east-1b").build())
            .instance_type(InstanceType::M5Large)
            .state(InstanceState::builder().name(InstanceStateName::Running).build())
            .set_instance_lifecycle(lifecycle)
            .tags(Tag::builder().key(ASG_NAME_TAG).value("workers").build())
            .tags(Tag::builder().key("cluster").value("blue").build())
            .build()
    }

    #[test]
    fn reads_an_ec2_instance() {
        let info = InstanceInfo::from_ec2(&instance(Some(InstanceLifecycleType::Spot)), None).unwrap();
        assert_eq!(info.instance_id, "i-0123456789abcdef0");
        assert_eq!(info.node_name.as_deref(), Some("ip-10-0-0-1.ec2.internal"));
        assert_eq!(info.provider_id, "aws:///us-east-1b/i-0123456789abcdef0");
        assert_eq!(info.zone, "us-east-1b");
        assert_eq!(info.instance_type, "m5.large");
        assert_eq!(info.capacity_type, CapacityType::Spot);
        assert_eq!(info.state, "running");
        assert_eq!(info.asg_name(), Some("workers"));
        assert!(info.managed);
        let on_demand = InstanceInfo::from_ec2(&instance(None), None).unwrap();
        assert_eq!(on_demand.capacity_type, CapacityType::OnDemand);
    }

    #[test]
    fn managed_tag_checks_key_and_value() {
        let ec2 = instance(None);
        let any = ManagedTag::key("cluster");
        let blue = ManagedTag::key_value("cluster", "blue");
        let green = ManagedTag::key_value("cluster", "green");
        let absent = ManagedTag::key("other");
        assert!(InstanceInfo::from_ec2(&ec2, Some(&any)).unwrap().managed);
        assert!(InstanceInfo::from_ec2(&ec2, Some(&blue)).unwrap().managed);
        assert!(!InstanceInfo::from_ec2(&ec2, Some(&green)).unwrap().managed);
        assert!(!InstanceInfo::from_ec2(&ec2, Some(&absent)).unwrap().managed);
    }

    #[test]
    fn incomplete_instances_are_errors_naming_the_field() {
        let no_zone = Instance::builder()
            .instance_id("i-1")
            .instance_type(InstanceType::M5Large)
            .state(InstanceState::builder().name(InstanceStateName::Running).build())
            .build();
        let err = InstanceInfo::from_ec2(&no_zone, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DescribeInstances returned instance i-1 without Placement.AvailabilityZone"
        );
        let no_id = Instance::builder().build();
        assert!(matches!(
            InstanceInfo::from_ec2(&no_id, None),
            Err(Error::Incomplete {
                field: "InstanceId",
                ..
            })
        ));
        // A stopped instance has no DNS name: reported as no node name, not an empty one.
        let mut stopped = instance(None);
        stopped.private_dns_name = Some(String::new());
        assert_eq!(InstanceInfo::from_ec2(&stopped, None).unwrap().node_name, None);
    }
}
