//! Finding nodes: by `spec.providerID` (for clusters whose node names are not the EC2 private
//! DNS names: k3s short names, kOps instance-id names, custom DHCP domains), and by annotation
//! (where handlers record their progress).

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;

/// Errors of node lookups.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing nodes failed.
    #[error("listing nodes: {0}")]
    List(#[source] kube::Error),
}

/// The name of the node whose `spec.providerID` ends with `/<instance_id>` (the AWS provider
/// id is `aws:///<zone>/<instance-id>`), or `None`.
pub async fn by_instance_id(client: &kube::Client, instance_id: &str) -> Result<Option<String>, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let suffix = format!("/{instance_id}");
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(Error::List)?;
        let found = page.items.iter().find(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .is_some_and(|p| p.ends_with(&suffix))
        });
        if let Some(node) = found {
            return Ok(node.metadata.name.clone());
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(None),
        }
    }
}

/// The names of the nodes whose annotation `key` equals `value` (a metadata-only list).
pub async fn with_annotation(client: &kube::Client, key: &str, value: &str) -> Result<Vec<String>, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    let mut names = Vec::new();
    loop {
        let page = api.list_metadata(&params).await.map_err(Error::List)?;
        names.extend(page.items.into_iter().filter_map(|n| {
            let matches = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .is_some_and(|v| v == value);
            if matches { n.metadata.name } else { None }
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(names),
        }
    }
}
