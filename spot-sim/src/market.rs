//! A seeded spot market: one pool per (instance type, availability zone), each with a spot
//! price that moves over virtual time, a finite and regenerating spare capacity, and an
//! interruption process whose rate follows the pool's Spot Instance Advisor band.
//!
//! # Model
//!
//! - **Pool parameters** ([`PoolParams`]) come from a [`PriceSource`] (by default
//!   [`OfflinePrices::embedded`]): the on-demand price of the zone's region, the mean spot
//!   price (the source's spot price for the zone, i.e. on-demand × (1 − advisor savings) ×
//!   the zone factor), and the interruption band. A source without a spot price gives
//!   on-demand × (1 − [`MarketConfig::default_savings`]); one without a band gives
//!   [`MarketConfig::default_band`]. [`Market::set_pool`] overrides everything (crafted
//!   markets in tests).
//! - **Spot price**: the log price follows an Ornstein-Uhlenbeck process around the log of the
//!   mean, sampled on a fixed grid of [`MarketConfig::price_interval`]:
//!   `x' = μ + (x − μ)·a + σ·√((1 − a²)/(2θ))·Z`, `a = e^{−θΔ}` (the exact transition, so the
//!   grid step does not bias the process); the first value is drawn from the stationary
//!   distribution. The price is `min(e^x, on-demand × max_on_demand_fraction)`: always
//!   positive and below on-demand. Between grid points the price holds (AWS's smoothed spot
//!   prices change a few times a day at most).
//! - **Capacity**: each pool has room for [`PoolParams::capacity`] more spot instances.
//!   [`Market::acquire`] takes one unit (an empty pool answers
//!   [`Error::InsufficientCapacity`]); [`Market::release`] gives it back (an instance the
//!   customer terminated); an interrupted instance's unit is not returned (EC2 reclaimed it).
//!   Spare capacity regenerates linearly at [`MarketConfig::capacity_regen_per_hour`] of the
//!   pool's capacity per hour, up to the capacity. The default capacity is
//!   `capacity × band_capacity_factors[band] × u`, `u` uniform in `[1 − spread, 1 + spread]`
//!   from the pool's seeded stream: pools that are interrupted more have less spare room, as
//!   AWS's capacity-optimized strategies assume.
//! - **Interruptions**: each spot instance's notice arrives after an exponential time of rate
//!   `λ = −ln(1 − p)/month` (month = 30 days, `p` = [`MarketConfig::band_monthly_rates`] of
//!   the band), so a fraction `p` of the instances that run for a whole month get a notice in
//!   it. The superposition over a pool's `n` running instances is a Poisson process of rate
//!   `nλ`: the per-pool process the advisor's bands describe. The instance is reclaimed
//!   [`MarketConfig::notice`] (two minutes) after its notice. With probability
//!   [`MarketConfig::rebalance_probability`] a rebalance recommendation precedes the notice by
//!   [`MarketConfig::rebalance_lead`] (no earlier than the launch).
//!
//! Everything is driven by virtual time ([`Market::advance`]) and computed lazily when a pool
//! is consulted, from per-pool and per-instance random streams ([`crate::rng`]): the same seed
//! gives the same prices, capacities and interruption times whatever the order and frequency
//! of the calls, on every platform.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spot_core::labels::region_of_zone;
use spot_core::price::{OfflinePrices, PriceSource};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::rng::{self, SimRng};

/// A month as the interruption bands count it: 30 days.
pub const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A configuration field with an invalid value.
    #[error("market config: {field} = {value}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        message: &'static str,
    },
    /// A pool the market cannot price.
    #[error("pool {instance_type} in {zone}: {reason}")]
    UnknownPool {
        /// The instance type.
        instance_type: String,
        /// The zone.
        zone: String,
        /// Why (no on-demand price, invalid zone name).
        reason: String,
    },
    /// Invalid parameters given to [`Market::set_pool`].
    #[error("pool {pool}: {field} = {value}: {message}")]
    PoolParams {
        /// The pool.
        pool: PoolKey,
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        message: &'static str,
    },
    /// The pool has no spare spot capacity right now.
    #[error("no spare spot capacity for {instance_type} in {zone}")]
    InsufficientCapacity {
        /// The instance type.
        instance_type: String,
        /// The zone.
        zone: String,
    },
}

/// A spot pool: an instance type in an availability zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolKey {
    /// Instance type name.
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
}

impl PoolKey {
    /// The pool of `instance_type` in `zone`.
    pub fn new(instance_type: impl Into<String>, zone: impl Into<String>) -> PoolKey {
        PoolKey {
            instance_type: instance_type.into(),
            zone: zone.into(),
        }
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.instance_type, self.zone)
    }
}

/// Market settings. [`Default`] gives the values documented on each field.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketConfig {
    /// Seed of every random stream (default 1).
    pub seed: u64,
    /// The wall-clock time of virtual time zero (default 2026-01-01T00:00:00Z).
    pub start: OffsetDateTime,
    /// Share of instances interrupted per month for bands 0-4 (`<5 %`, `5-10 %`, `10-15 %`,
    /// `15-20 %`, `>20 %`); default the midpoints `[0.025, 0.075, 0.125, 0.175, 0.25]` (25 % for
    /// the open band). Each in `[0, 1)`.
    pub band_monthly_rates: [f64; 5],
    /// Grid step of the spot price process (default 1 hour, must be positive).
    pub price_interval: Duration,
    /// Mean-reversion speed θ of the log price, per hour (default 0.05: a deviation halves in
    /// about 14 hours; at least 0).
    pub price_reversion_per_hour: f64,
    /// Volatility σ of the log price per √hour (default 0.03; 0 keeps every price at its
    /// mean; at least 0).
    pub price_volatility: f64,
    /// Spot prices are capped at this fraction of on-demand (default 0.95, in `(0, 1]`).
    pub max_on_demand_fraction: f64,
    /// Savings versus on-demand when the price source has no spot price (default 0.6, in
    /// `[0, 1)`).
    pub default_savings: f64,
    /// Interruption band when the price source has none (default 1, at most 4).
    pub default_band: u8,
    /// Base spare capacity of a pool, in instances (default 200).
    pub capacity: u32,
    /// Capacity multiplier per interruption band (default `[1.0, 0.7, 0.5, 0.35, 0.2]`, each at
    /// least 0).
    pub band_capacity_factors: [f64; 5],
    /// Relative spread of the seeded per-pool capacity factor (default 0.5, in `[0, 1]`).
    pub capacity_spread: f64,
    /// Share of a pool's capacity that regenerates per hour (default 0.1; at least 0).
    pub capacity_regen_per_hour: f64,
    /// Time from the interruption notice to the reclaim (default 2 minutes).
    pub notice: Duration,
    /// Probability that a rebalance recommendation precedes an interruption notice (default
    /// 0.5, in `[0, 1]`).
    pub rebalance_probability: f64,
    /// How long before the notice the rebalance recommendation comes (default 15 minutes).
    pub rebalance_lead: Duration,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            seed: 1,
            start: datetime!(2026-01-01 00:00:00 UTC),
            band_monthly_rates: [0.025, 0.075, 0.125, 0.175, 0.25],
            price_interval: Duration::from_secs(3600),
            price_reversion_per_hour: 0.05,
            price_volatility: 0.03,
            max_on_demand_fraction: 0.95,
            default_savings: 0.6,
            default_band: 1,
            capacity: 200,
            band_capacity_factors: [1.0, 0.7, 0.5, 0.35, 0.2],
            capacity_spread: 0.5,
            capacity_regen_per_hour: 0.1,
            notice: Duration::from_secs(120),
            rebalance_probability: 0.5,
            rebalance_lead: Duration::from_secs(15 * 60),
        }
    }
}

impl MarketConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        fn bad(field: &'static str, value: impl fmt::Debug, message: &'static str) -> Result<(), Error> {
            Err(Error::Config {
                field,
                value: format!("{value:?}"),
                message,
            })
        }
        let unit = |x: f64| (0.0..1.0).contains(&x);
        if let Some(r) = self.band_monthly_rates.iter().find(|r| !unit(**r)) {
            return bad("band_monthly_rates", r, "each rate must be in [0, 1)");
        }
        if self.price_interval.is_zero() {
            return bad("price_interval", self.price_interval, "must be positive");
        }
        if !(self.price_reversion_per_hour.is_finite() && self.price_reversion_per_hour >= 0.0) {
            return bad(
                "price_reversion_per_hour",
                self.price_reversion_per_hour,
                "must be finite and at least 0",
            );
        }
        if !(self.price_volatility.is_finite() && self.price_volatility >= 0.0) {
            return bad(
                "price_volatility",
                self.price_volatility,
                "must be finite and at least 0",
            );
        }
        if !(self.max_on_demand_fraction > 0.0 && self.max_on_demand_fraction <= 1.0) {
            return bad(
                "max_on_demand_fraction",
                self.max_on_demand_fraction,
                "must be in (0, 1]",
            );
        }
        if !unit(self.default_savings) {
            return bad("default_savings", self.default_savings, "must be in [0, 1)");
        }
        if self.default_band > 4 {
            return bad("default_band", self.default_band, "must be at most 4");
        }
        if let Some(f) = self
            .band_capacity_factors
            .iter()
            .find(|f| !(f.is_finite() && **f >= 0.0))
        {
            return bad(
                "band_capacity_factors",
                f,
                "each factor must be finite and at least 0",
            );
        }
        if !(0.0..=1.0).contains(&self.capacity_spread) {
            return bad("capacity_spread", self.capacity_spread, "must be in [0, 1]");
        }
        if !(self.capacity_regen_per_hour.is_finite() && self.capacity_regen_per_hour >= 0.0) {
            return bad(
                "capacity_regen_per_hour",
                self.capacity_regen_per_hour,
                "must be finite and at least 0",
            );
        }
        if !(0.0..=1.0).contains(&self.rebalance_probability) {
            return bad(
                "rebalance_probability",
                self.rebalance_probability,
                "must be in [0, 1]",
            );
        }
        Ok(())
    }

    /// The interruption-notice rate of one instance in band `band` (clamped to 4), per
    /// second: `−ln(1 − p)/month`.
    pub fn interruption_rate_per_second(&self, band: u8) -> f64 {
        let p = self.band_monthly_rates[usize::from(band.min(4))];
        -rng::ln(1.0 - p) / MONTH.as_secs_f64()
    }
}

/// The parameters of one pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolParams {
    /// On-demand price, USD per hour.
    pub on_demand: f64,
    /// Long-run mean of the spot price, USD per hour.
    pub mean_spot: f64,
    /// Interruption band 0-4.
    pub band: u8,
    /// Spare capacity, in instances, when the pool is fully regenerated.
    pub capacity: u32,
}

/// When an instance's interruption happens, as offsets of virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionPlan {
    /// The rebalance recommendation, if one precedes the notice.
    pub rebalance_at: Option<Duration>,
    /// The two-minute interruption notice.
    pub notice_at: Duration,
    /// The reclaim (the notice's deadline).
    pub terminate_at: Duration,
}

#[derive(Debug, Clone)]
struct Pool {
    params: PoolParams,
    /// OU transition per grid step of the log price's deviation from the log mean:
    /// `d' = d·decay + noise·Z`.
    decay: f64,
    noise: f64,
    /// The grid step `deviation` belongs to.
    step: u64,
    /// `ln(price) − ln(mean)`: the price is `mean × e^deviation`, exactly the mean at 0.
    deviation: f64,
    rng: SimRng,
    /// Spare capacity (fractional while regenerating).
    available: f64,
    /// Virtual time `available` is up to date at.
    available_at: Duration,
}

/// The seeded spot market; see the [module documentation](self).
pub struct Market {
    config: MarketConfig,
    prices: Arc<dyn PriceSource>,
    now: Duration,
    pools: BTreeMap<PoolKey, Pool>,
}

impl fmt::Debug for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Market")
            .field("config", &self.config)
            .field("now", &self.now)
            .field("pools", &self.pools.len())
            .finish_non_exhaustive()
    }
}

impl Market {
    /// A market priced by `prices`, at virtual time zero.
    pub fn new(config: MarketConfig, prices: Arc<dyn PriceSource>) -> Result<Market, Error> {
        config.validate()?;
        Ok(Market {
            config,
            prices,
            now: Duration::ZERO,
            pools: BTreeMap::new(),
        })
    }

    /// A market priced by [`OfflinePrices::embedded`] (estimated on-demand prices and the
    /// seeded advisor data).
    pub fn offline(config: MarketConfig) -> Result<Market, Error> {
        Market::new(config, Arc::new(OfflinePrices::embedded()))
    }

    /// The settings.
    pub fn config(&self) -> &MarketConfig {
        &self.config
    }

    /// The price source pools are created from.
    pub fn prices(&self) -> &Arc<dyn PriceSource> {
        &self.prices
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The wall-clock time of virtual time `at`.
    pub fn time_at(&self, at: Duration) -> OffsetDateTime {
        self.config.start + at
    }

    /// The wall-clock time now.
    pub fn now_utc(&self) -> OffsetDateTime {
        self.time_at(self.now)
    }

    /// Moves virtual time forward by `dt`.
    pub fn advance(&mut self, dt: Duration) {
        self.now = self.now.saturating_add(dt);
    }

    /// Moves virtual time forward to `at` (no effect when `at` is not later than now).
    pub fn advance_to(&mut self, at: Duration) {
        self.now = self.now.max(at);
    }

    /// The pools consulted or configured so far.
    pub fn pools(&self) -> Vec<PoolKey> {
        self.pools.keys().cloned().collect()
    }

    /// The parameters of a pool the market already holds (consulted or configured), without
    /// creating it.
    pub fn known_params(&self, key: &PoolKey) -> Option<&PoolParams> {
        self.pools.get(key).map(|p| &p.params)
    }

    /// The on-demand price of an instance type in a region: a held pool's (the first zone of
    /// the region, so crafted pools win), else the price source's.
    pub fn region_on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.region_pool(region, instance_type)
            .map(|p| p.on_demand)
            .or_else(|| self.prices.on_demand(region, instance_type))
    }

    /// The interruption band of an instance type in a region: a held pool's, else the price
    /// source's.
    pub fn region_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        self.region_pool(region, instance_type)
            .map(|p| p.band)
            .or_else(|| self.prices.interruption_band(region, instance_type))
    }

    fn region_pool(&self, region: &str, instance_type: &str) -> Option<&PoolParams> {
        self.pools
            .iter()
            .find(|(k, _)| k.instance_type == instance_type && region_of_zone(&k.zone) == Some(region))
            .map(|(_, p)| &p.params)
    }

    /// The parameters the price source gives a pool (not stored).
    pub fn default_params(&self, key: &PoolKey) -> Result<PoolParams, Error> {
        let unknown = |reason: String| Error::UnknownPool {
            instance_type: key.instance_type.clone(),
            zone: key.zone.clone(),
            reason,
        };
        let region = region_of_zone(&key.zone)
            .ok_or_else(|| unknown("not an availability zone name such as us-east-1a".to_owned()))?;
        let on_demand = self
            .prices
            .on_demand(region, &key.instance_type)
            .filter(|p| p.is_finite() && *p > 0.0)
            .ok_or_else(|| unknown(format!("no on-demand price in {region}")))?;
        let cap = on_demand * self.config.max_on_demand_fraction;
        let mean_spot = self
            .prices
            .spot(&key.zone, &key.instance_type)
            .filter(|p| p.is_finite() && *p > 0.0)
            .unwrap_or(on_demand * (1.0 - self.config.default_savings))
            .min(cap);
        let band = self
            .prices
            .interruption_band(region, &key.instance_type)
            .unwrap_or(self.config.default_band)
            .min(4);
        let mut draw = SimRng::stream(self.config.seed, &format!("capacity/{key}"));
        let spread = self.config.capacity_spread;
        let factor = self.config.band_capacity_factors[usize::from(band)]
            * (1.0 - spread + 2.0 * spread * draw.next_f64());
        let capacity = (f64::from(self.config.capacity) * factor).round();
        Ok(PoolParams {
            on_demand,
            mean_spot,
            band,
            capacity: capacity.clamp(0.0, f64::from(u32::MAX)) as u32,
        })
    }

    /// Sets a pool's parameters (a crafted market). The price process restarts from the new
    /// mean at the current grid step; the spare capacity is set to the new capacity.
    pub fn set_pool(&mut self, key: PoolKey, params: PoolParams) -> Result<(), Error> {
        let bad = |field: &'static str, value: String, message: &'static str| Error::PoolParams {
            pool: key.clone(),
            field,
            value,
            message,
        };
        if !(params.on_demand.is_finite() && params.on_demand > 0.0) {
            return Err(bad(
                "on_demand",
                params.on_demand.to_string(),
                "must be a positive price",
            ));
        }
        if !(params.mean_spot.is_finite() && params.mean_spot > 0.0) {
            return Err(bad(
                "mean_spot",
                params.mean_spot.to_string(),
                "must be a positive price",
            ));
        }
        if params.band > 4 {
            return Err(bad("band", params.band.to_string(), "must be at most 4"));
        }
        let mut pool = self.make_pool(&key, params);
        pool.step = self.step_now();
        self.pools.insert(key, pool);
        Ok(())
    }

    /// A pool's parameters.
    pub fn params(&mut self, key: &PoolKey) -> Result<PoolParams, Error> {
        Ok(self.pool(key)?.params.clone())
    }

    /// The current spot price of a pool, USD per hour.
    pub fn spot_price(&mut self, key: &PoolKey) -> Result<f64, Error> {
        let cap = self.config.max_on_demand_fraction;
        let pool = self.pool(key)?;
        Ok((pool.params.mean_spot * rng::exp(pool.deviation)).min(pool.params.on_demand * cap))
    }

    /// The on-demand price of a pool, USD per hour.
    pub fn on_demand_price(&mut self, key: &PoolKey) -> Result<f64, Error> {
        Ok(self.pool(key)?.params.on_demand)
    }

    /// The spare capacity of a pool, in whole instances.
    pub fn available(&mut self, key: &PoolKey) -> Result<u32, Error> {
        Ok(self.pool(key)?.available.floor() as u32)
    }

    /// Sets a pool's spare capacity now (it regenerates from there).
    pub fn set_available(&mut self, key: &PoolKey, available: u32) -> Result<(), Error> {
        let pool = self.pool(key)?;
        pool.available = f64::from(available);
        Ok(())
    }

    /// Takes one unit of spare capacity for a new spot instance and returns the price it
    /// pays; [`Error::InsufficientCapacity`] when the pool is empty.
    pub fn acquire(&mut self, key: &PoolKey) -> Result<f64, Error> {
        let price = self.spot_price(key)?;
        let pool = self.pool(key)?;
        if pool.available < 1.0 {
            return Err(Error::InsufficientCapacity {
                instance_type: key.instance_type.clone(),
                zone: key.zone.clone(),
            });
        }
        pool.available -= 1.0;
        Ok(price)
    }

    /// Gives one unit of capacity back (a spot instance the customer terminated).
    pub fn release(&mut self, key: &PoolKey) -> Result<(), Error> {
        let pool = self.pool(key)?;
        pool.available = (pool.available + 1.0).min(f64::from(pool.params.capacity));
        Ok(())
    }

    /// When the spot instance `instance_id`, launched at `launched_at` in the pool, gets its
    /// rebalance recommendation, notice and reclaim; `None` when the band's rate is 0 (or the
    /// notice would come after a century). The draw comes from the instance's own stream.
    pub fn plan_interruption(
        &mut self,
        key: &PoolKey,
        instance_id: &str,
        launched_at: Duration,
    ) -> Result<Option<InterruptionPlan>, Error> {
        let band = self.pool(key)?.params.band;
        let rate = self.config.interruption_rate_per_second(band);
        let mut draw = SimRng::stream(self.config.seed, &format!("interruption/{instance_id}"));
        let wait = draw.exponential(rate);
        const CENTURY: f64 = 100.0 * 365.0 * 86_400.0;
        if wait.is_nan() || wait >= CENTURY {
            return Ok(None);
        }
        let notice_at = launched_at + Duration::from_secs_f64(wait);
        let rebalance_at = draw.chance(self.config.rebalance_probability).then(|| {
            notice_at
                .saturating_sub(self.config.rebalance_lead)
                .max(launched_at)
        });
        Ok(Some(InterruptionPlan {
            rebalance_at,
            notice_at,
            terminate_at: notice_at + self.config.notice,
        }))
    }

    fn step_now(&self) -> u64 {
        (self.now.as_nanos() / self.config.price_interval.as_nanos()) as u64
    }

    fn make_pool(&self, key: &PoolKey, params: PoolParams) -> Pool {
        let c = &self.config;
        let dt_hours = c.price_interval.as_secs_f64() / 3600.0;
        let theta = c.price_reversion_per_hour;
        let sigma = c.price_volatility;
        let decay = rng::exp(-theta * dt_hours);
        let noise = if theta > 0.0 {
            sigma * ((1.0 - decay * decay) / (2.0 * theta)).sqrt()
        } else {
            sigma * dt_hours.sqrt()
        };
        let mut rng = SimRng::stream(c.seed, &format!("price/{key}"));
        // Start in the stationary distribution (a random walk without reversion starts at
        // its mean).
        let stationary = if theta > 0.0 {
            sigma / (2.0 * theta).sqrt()
        } else {
            0.0
        };
        let z = rng.normal();
        let available = f64::from(params.capacity);
        Pool {
            params,
            decay,
            noise,
            step: 0,
            deviation: stationary * z,
            rng,
            available,
            available_at: self.now,
        }
    }

    /// The pool, created from the price source on first use, brought up to the current time.
    fn pool(&mut self, key: &PoolKey) -> Result<&mut Pool, Error> {
        if !self.pools.contains_key(key) {
            let params = self.default_params(key)?;
            let pool = self.make_pool(key, params);
            self.pools.insert(key.clone(), pool);
        }
        let target = self.step_now();
        let now = self.now;
        let regen = self.config.capacity_regen_per_hour;
        let pool = self.pools.get_mut(key).ok_or_else(|| Error::UnknownPool {
            instance_type: key.instance_type.clone(),
            zone: key.zone.clone(),
            reason: "the pool vanished".to_owned(),
        })?;
        while pool.step < target {
            let z = pool.rng.normal();
            pool.deviation = pool.deviation * pool.decay + pool.noise * z;
            pool.step += 1;
        }
        let capacity = f64::from(pool.params.capacity);
        if now > pool.available_at {
            let hours = (now - pool.available_at).as_secs_f64() / 3600.0;
            pool.available = (pool.available + regen * capacity * hours).min(capacity.max(pool.available));
            pool.available_at = now;
        }
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, z: &str) -> PoolKey {
        PoolKey::new(t, z)
    }

    fn market(seed: u64) -> Market {
        Market::offline(MarketConfig {
            seed,
            ..MarketConfig::default()
        })
        .unwrap()
    }

    /// Prices of a few pools every 6 hours for 10 days.
    fn trace(m: &mut Market) -> Vec<f64> {
        let pools = [
            key("m5.large", "us-east-1a"),
            key("c5.xlarge", "us-east-1b"),
            key("r6g.2xlarge", "us-west-2a"),
        ];
        let mut out = Vec::new();
        for _ in 0..40 {
            for p in &pools {
                out.push(m.spot_price(p).unwrap());
            }
            m.advance(Duration::from_secs(6 * 3600));
        }
        out
    }

    #[test]
    fn deterministic_given_the_seed_whatever_the_call_pattern() {
        let a = trace(&mut market(7));
        assert_eq!(a, trace(&mut market(7)));
        assert_ne!(a, trace(&mut market(8)));
        // Stepping hour by hour and consulting only at the end gives the same price as one
        // jump: prices do not depend on how time was advanced or on other pools.
        let mut fine = market(7);
        for _ in 0..(24 * 9) {
            fine.advance(Duration::from_secs(3600));
            fine.spot_price(&key("c5.xlarge", "us-east-1b")).unwrap();
        }
        let mut coarse = market(7);
        coarse.advance(Duration::from_secs(24 * 9 * 3600));
        let p = key("m5.large", "us-east-1a");
        assert_eq!(fine.spot_price(&p).unwrap(), coarse.spot_price(&p).unwrap());
        assert_eq!(fine.spot_price(&p).unwrap(), a[36 * 3]);
        // Capacities are seeded per pool.
        assert_eq!(market(7).params(&p).unwrap(), market(7).params(&p).unwrap());
        let plan = |m: &mut Market| m.plan_interruption(&p, "i-0123", Duration::ZERO).unwrap();
        assert_eq!(plan(&mut market(7)), plan(&mut market(7)));
        assert_ne!(plan(&mut market(7)), plan(&mut market(8)));
    }

    #[test]
    fn prices_stay_positive_below_on_demand_and_revert_to_the_mean() {
        let mut m = Market::offline(MarketConfig {
            price_volatility: 0.3,
            ..MarketConfig::default()
        })
        .unwrap();
        let pools: Vec<PoolKey> = ["m5.large", "c5.xlarge", "t3.micro", "g5.xlarge", "m6g.medium"]
            .iter()
            .map(|t| key(t, "us-east-1a"))
            .collect();
        let mut sums = vec![0.0; pools.len()];
        let steps = 24 * 365;
        for _ in 0..steps {
            m.advance(Duration::from_secs(3600));
            for (i, p) in pools.iter().enumerate() {
                let price = m.spot_price(p).unwrap();
                let od = m.on_demand_price(p).unwrap();
                assert!(price > 0.0 && price < od, "{p}: {price} vs on-demand {od}");
                sums[i] += rng::ln(price);
            }
        }
        for (i, p) in pools.iter().enumerate() {
            let params = m.params(p).unwrap();
            let mean = rng::exp(sums[i] / f64::from(steps));
            assert!(
                (mean / params.mean_spot - 1.0).abs() < 0.15,
                "{p}: geometric mean {mean} vs {}",
                params.mean_spot
            );
        }
        // No volatility: the price is the mean.
        let mut flat = Market::offline(MarketConfig {
            price_volatility: 0.0,
            ..MarketConfig::default()
        })
        .unwrap();
        let p = key("m5.large", "us-east-1a");
        let mean = flat.params(&p).unwrap().mean_spot;
        flat.advance(Duration::from_secs(86_400 * 3));
        assert_eq!(flat.spot_price(&p).unwrap(), mean);
        // The mean comes from the advisor data: on-demand × (1 − savings) × zone factor.
        let prices = OfflinePrices::embedded();
        assert_eq!(mean, prices.spot("us-east-1a", "m5.large").unwrap());
        assert_eq!(
            flat.params(&p).unwrap().band,
            prices.interruption_band("us-east-1", "m5.large").unwrap()
        );
    }

    #[test]
    fn interruption_rates_match_the_bands() {
        // 4,000 instances per band running for three months: the share that got a notice is
        // 1 − (1 − p)^3; the tolerance is 4 standard deviations of a binomial share.
        let mut m = market(11);
        let n = 4000;
        let horizon = MONTH * 3;
        for band in 0..5u8 {
            let p = key("m5.large", &format!("us-east-1{}", char::from(b'a' + band)));
            m.set_pool(
                p.clone(),
                PoolParams {
                    on_demand: 0.1,
                    mean_spot: 0.04,
                    band,
                    capacity: n,
                },
            )
            .unwrap();
            let mut interrupted = 0;
            let mut rebalanced = 0;
            for i in 0..n {
                let plan = m
                    .plan_interruption(&p, &format!("i-{band}-{i}"), Duration::ZERO)
                    .unwrap();
                if let Some(plan) = plan.filter(|plan| plan.notice_at <= horizon) {
                    interrupted += 1;
                    assert_eq!(plan.terminate_at - plan.notice_at, Duration::from_secs(120));
                    if let Some(r) = plan.rebalance_at {
                        rebalanced += 1;
                        assert!(r <= plan.notice_at && plan.notice_at - r <= Duration::from_secs(900));
                    }
                }
            }
            let monthly = m.config().band_monthly_rates[usize::from(band)];
            let expected = 1.0 - (1.0 - monthly).powi(3);
            let share = f64::from(interrupted) / f64::from(n);
            let sd = (expected * (1.0 - expected) / f64::from(n)).sqrt();
            assert!(
                (share - expected).abs() < 4.0 * sd,
                "band {band}: {share} interrupted in 3 months, expected {expected} ± {sd}"
            );
            // About half of the notices are preceded by a rebalance recommendation.
            let half = f64::from(rebalanced) / f64::from(interrupted.max(1));
            assert!((half - 0.5).abs() < 0.15, "band {band}: {half}");
        }
        // Configurable rates: a zero rate never interrupts.
        let mut calm = Market::offline(MarketConfig {
            band_monthly_rates: [0.0; 5],
            ..MarketConfig::default()
        })
        .unwrap();
        assert_eq!(
            calm.plan_interruption(&key("m5.large", "us-east-1a"), "i-1", Duration::ZERO)
                .unwrap(),
            None
        );
    }

    #[test]
    fn capacity_runs_out_and_regenerates() {
        let mut m = market(3);
        let p = key("m5.large", "us-east-1a");
        m.set_pool(
            p.clone(),
            PoolParams {
                on_demand: 0.096,
                mean_spot: 0.04,
                band: 0,
                capacity: 3,
            },
        )
        .unwrap();
        for _ in 0..3 {
            let price = m.acquire(&p).unwrap();
            assert!(price > 0.0 && price < 0.096);
        }
        assert_eq!(m.available(&p).unwrap(), 0);
        assert_eq!(
            m.acquire(&p),
            Err(Error::InsufficientCapacity {
                instance_type: "m5.large".into(),
                zone: "us-east-1a".into()
            })
        );
        // A customer termination gives a unit back.
        m.release(&p).unwrap();
        assert_eq!(m.available(&p).unwrap(), 1);
        m.acquire(&p).unwrap();
        // 10 % of 3 per hour: one unit after 3h20m, full after 10 hours, never above.
        m.advance(Duration::from_secs(3 * 3600));
        assert_eq!(m.available(&p).unwrap(), 0);
        m.advance(Duration::from_secs(1200));
        assert_eq!(m.available(&p).unwrap(), 1);
        m.advance(Duration::from_secs(24 * 3600));
        assert_eq!(m.available(&p).unwrap(), 3);
        m.release(&p).unwrap();
        assert_eq!(m.available(&p).unwrap(), 3);
        m.set_available(&p, 0).unwrap();
        assert!(matches!(m.acquire(&p), Err(Error::InsufficientCapacity { .. })));
    }

    #[test]
    fn default_capacity_follows_the_band() {
        let m = market(5);
        let mut by_band = [(0.0, 0u32); 5];
        for t in spot_core::Catalog::embedded()
            .offered_types("us-east-1a")
            .into_iter()
            .filter(|t| t.spot_supported)
        {
            let params = m.default_params(&key(&t.name, "us-east-1a")).unwrap();
            let slot = &mut by_band[usize::from(params.band)];
            slot.0 += f64::from(params.capacity);
            slot.1 += 1;
            assert!(params.mean_spot < params.on_demand, "{}", t.name);
        }
        let means: Vec<f64> = by_band.iter().map(|(s, n)| s / f64::from(*n)).collect();
        assert!(means.windows(2).all(|w| w[0] > w[1]), "{means:?}");
        assert!((means[0] - 200.0).abs() < 20.0, "{means:?}");
    }

    #[test]
    fn errors_name_the_field_and_the_pool() {
        let err = Market::offline(MarketConfig {
            band_monthly_rates: [0.0, 0.1, 1.0, 0.2, 0.3],
            ..MarketConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("band_monthly_rates"), "{err}");
        let err = Market::offline(MarketConfig {
            price_interval: Duration::ZERO,
            ..MarketConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("price_interval"), "{err}");
        let mut m = market(1);
        let err = m.spot_price(&key("m99.huge", "us-east-1a")).unwrap_err();
        assert!(
            err.to_string().contains("m99.huge") && err.to_string().contains("on-demand"),
            "{err}"
        );
        let err = m.spot_price(&key("m5.large", "nowhere")).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        let err = m
            .set_pool(
                key("m5.large", "us-east-1a"),
                PoolParams {
                    on_demand: -1.0,
                    mean_spot: 0.1,
                    band: 0,
                    capacity: 1,
                },
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("on_demand") && err.to_string().contains("m5.large/us-east-1a"),
            "{err}"
        );
        assert!(matches!(
            m.set_pool(
                key("m5.large", "us-east-1a"),
                PoolParams {
                    on_demand: 1.0,
                    mean_spot: 0.1,
                    band: 9,
                    capacity: 1
                }
            ),
            Err(Error::PoolParams { field: "band", .. })
        ));
    }
}
