//! Domain model, traits and algorithms for running Kubernetes on EC2 Spot capacity.
//!
//! `spot-core` has no AWS SDK, no Kubernetes client and no network code: it is the
//! vocabulary every other crate of the workspace speaks, plus the pure algorithms.
//!
//! - Quantities and resources: [`quantity`], [`resources`].
//! - Scheduling vocabulary: [`labels`], [`requirements`], [`pod`]; the scheduling simulation:
//!   [`scheduling`].
//! - Capacity: [`instance_type`], [`allocatable`], [`catalog`], [`price`], instance-type
//!   selection: [`select`], and launch planning (one fleet request per claim): [`launch`].
//! - Interruptions: [`event`], and the seams that produce and act on them: [`source`],
//!   [`node`], [`cloud`], [`clock`], [`leader`].
//! - Disruption (consolidation, drift, budgets): [`disruption`].
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod allocatable;
pub mod catalog;
pub mod clock;
pub mod cloud;
pub mod disruption;
pub mod event;
pub mod instance_type;
pub mod labels;
pub mod launch;
pub mod leader;
pub mod node;
pub mod offerings;
pub mod packing;
pub mod pod;
pub mod price;
pub mod quantity;
pub mod requirements;
pub mod resources;
pub mod scheduling;
pub mod select;
pub mod source;

pub use allocatable::AllocatableModel;
pub use catalog::Catalog;
pub use clock::{Clock, TokioClock};
pub use cloud::CloudProvider;
pub use event::{EventId, EventKind, InterruptionEvent};
pub use instance_type::{Architecture, CapacityType, InstanceType, Offering};
pub use node::NodeActions;
pub use price::PriceSource;
pub use quantity::Quantity;
pub use requirements::{Operator, Requirement, Requirements};
pub use resources::Resources;
pub use source::EventSource;
