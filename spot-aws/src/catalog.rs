//! The provisioner's catalog read live from EC2: what `spot-provisioner run` launches from.
//!
//! [`Ec2Catalog::fetch`] reads the three EC2 sources of [`crate::select::live`] at once:
//! instance types (`DescribeInstanceTypes`), the zones offering each
//! (`DescribeInstanceTypeOfferings`) and the latest Linux spot price per (zone, type)
//! (`DescribeSpotPriceHistory`). EC2 has no on-demand price API (that is the Pricing service,
//! which moto and isolated VPCs lack), so on-demand prices and interruption bands come from a
//! fallback [`PriceSource`], usually the embedded tables. The parts are exactly what
//! `spot_provisioner::InstanceCatalog` holds (types, a [`ZoneAvailability`], a
//! [`PriceSource`]); the caller builds one from them and refreshes it periodically (Karpenter
//! re-reads types and prices every 12 hours and keeps the previous data when a read fails).

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_ec2::Client;
use spot_core::instance_type::InstanceType;
use spot_core::price::PriceSource;
use spot_core::select::{OfferingMap, ZoneAvailability};

use crate::select::live;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 read failed.
    #[error(transparent)]
    Ec2(#[from] live::Error),
    /// EC2 offers no instance type in any zone of the region.
    #[error("region {region:?}: DescribeInstanceTypeOfferings lists no instance type in any zone")]
    NoOfferings {
        /// The region read.
        region: String,
    },
}

/// Spot prices read from EC2; on-demand prices and interruption bands from a fallback.
#[derive(Clone)]
pub struct Ec2Prices {
    spot: Arc<HashMap<(String, String), f64>>,
    fallback: Arc<dyn PriceSource>,
}

impl std::fmt::Debug for Ec2Prices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Prices")
            .field("spot_prices", &self.spot.len())
            .finish_non_exhaustive()
    }
}

impl Ec2Prices {
    /// Spot prices by (zone, type), the rest from `fallback`.
    pub fn new(spot: HashMap<(String, String), f64>, fallback: Arc<dyn PriceSource>) -> Self {
        Ec2Prices {
            spot: Arc::new(spot),
            fallback,
        }
    }

    /// How many (zone, type) spot prices EC2 reported.
    pub fn spot_prices(&self) -> usize {
        self.spot.len()
    }
}

impl PriceSource for Ec2Prices {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.fallback.on_demand(region, instance_type)
    }

    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        self.spot
            .get(&(zone.to_owned(), instance_type.to_owned()))
            .copied()
    }

    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        self.fallback.interruption_band(region, instance_type)
    }
}

/// One read of a region's catalog.
#[derive(Debug, Clone)]
pub struct Ec2Catalog {
    /// The region read.
    pub region: String,
    /// Every instance type EC2 describes, sorted by name.
    pub types: Vec<InstanceType>,
    /// The zones of the region offering each type.
    pub offerings: OfferingMap,
    /// Spot prices from EC2, on-demand prices from the fallback.
    pub prices: Ec2Prices,
}

impl Ec2Catalog {
    /// Reads types, offerings and spot prices of `client`'s region (named `region`) at once;
    /// on-demand prices and interruption bands come from `fallback`. A region where EC2
    /// offers nothing is an error, so a bad region never empties a running catalog.
    pub async fn fetch(client: &Client, region: &str, fallback: Arc<dyn PriceSource>) -> Result<Self, Error> {
        let (types, offerings, spot) = tokio::try_join!(
            live::describe_instance_types(client),
            live::describe_offerings(client, region),
            live::describe_spot_prices(client),
        )?;
        if offerings.zones(region).is_empty() {
            return Err(Error::NoOfferings {
                region: region.to_owned(),
            });
        }
        Ok(Ec2Catalog {
            region: region.to_owned(),
            types,
            offerings,
            prices: Ec2Prices::new(spot, fallback),
        })
    }

    /// The instance types EC2 offers in at least one zone of the region.
    pub fn offered_types(&self) -> usize {
        self.types
            .iter()
            .filter(|t| !self.offerings.offered_zones(&self.region, &t.name).is_empty())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use spot_core::price::OfflinePrices;

    use super::*;

    #[test]
    fn spot_prices_from_ec2_and_the_rest_from_the_fallback() {
        let fallback: Arc<dyn PriceSource> = Arc::new(OfflinePrices::embedded());
        let prices = Ec2Prices::new(
            HashMap::from([(("us-east-1a".to_owned(), "m5.large".to_owned()), 0.031)]),
            fallback.clone(),
        );
        assert_eq!(prices.spot("us-east-1a", "m5.large"), Some(0.031));
        assert_eq!(
            prices.spot("us-east-1b", "m5.large"),
            None,
            "no price, no spot offering"
        );
        assert_eq!(
            prices.on_demand("us-east-1", "m5.large"),
            fallback.on_demand("us-east-1", "m5.large")
        );
        assert!(prices.on_demand("us-east-1", "m5.large").is_some());
        assert_eq!(
            prices.interruption_band("us-east-1", "m5.large"),
            fallback.interruption_band("us-east-1", "m5.large")
        );
        assert_eq!(prices.spot_prices(), 1);
    }
}
