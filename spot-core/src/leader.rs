//! The leadership seam: replicas of a component coordinate through the cluster (a Lease), so
//! that only one acts at a time.

use async_trait::async_trait;

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend failed.
    #[error("leader election: {0}")]
    Backend(String),
}

/// Decides which replica acts.
#[async_trait]
pub trait LeaderGate: Send + Sync {
    /// Waits until this replica leads.
    async fn acquire(&self) -> Result<(), Error>;

    /// Whether this replica leads right now.
    fn is_leader(&self) -> bool;

    /// Resolves when this replica, having led, has lost leadership (it must stop acting).
    async fn lost(&self);

    /// Gives leadership up so another replica takes over at once.
    async fn release(&self);
}

/// A gate for components that run as a single instance (or per node): always the leader.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysLeader;

#[async_trait]
impl LeaderGate for AlwaysLeader {
    async fn acquire(&self) -> Result<(), Error> {
        Ok(())
    }

    fn is_leader(&self) -> bool {
        true
    }

    async fn lost(&self) {
        std::future::pending::<()>().await;
    }

    async fn release(&self) {}
}
