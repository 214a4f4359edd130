//! spot-kube-sim's API semantics through kube-rs (and raw HTTP for malformed requests).

mod common;

use std::time::Duration;

use common::{TestSim, node, running_pod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use spot_k8s::sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The names in each complete listing a watcher stream reports (InitDone).
fn reflector_names(
    stream: impl futures::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
) -> impl futures::Stream<Item = Vec<String>> {
    stream
        .scan(Vec::new(), |acc, ev| {
            let out = match ev {
                Ok(watcher::Event::Init) => {
                    acc.clear();
                    None
                }
                Ok(watcher::Event::InitApply(p)) => {
                    acc.push(p.metadata.name.unwrap_or_default());
                    None
                }
                Ok(watcher::Event::InitDone) => Some(std::mem::take(acc)),
                _ => None,
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
}

/// A `Patch::Json` from JSON (kube does not re-export the json-patch types).
fn json_patch(v: Value) -> Patch<()> {
    Patch::Json(serde_json::from_value(v).expect("valid JSON patch"))
}

async fn raw(addr: std::net::SocketAddr, request: String) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_conflicts_patches_and_dry_run() {
    let ts = TestSim::start(SimConfig::default()).await;
    let client = ts.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(node("n1")).unwrap();
    let created = nodes.create(&PostParams::default(), &n).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        code(&nodes.create(&PostParams::default(), &n).await.unwrap_err()),
        409
    );
    assert_eq!(code(&nodes.get("missing").await.unwrap_err()), 404);

    // Optimistic concurrency.
    let mut a = nodes.get("n1").await.unwrap();
    let mut b = a.clone();
    a.metadata
        .labels
        .get_or_insert_default()
        .insert("a".into(), "1".into());
    nodes.replace("n1", &PostParams::default(), &a).await.unwrap();
    b.metadata
        .labels
        .get_or_insert_default()
        .insert("b".into(), "1".into());
    let err = nodes.replace("n1", &PostParams::default(), &b).await.unwrap_err();
    assert_eq!(code(&err), 409);

    // JSON patch with a failing test is 422, a passing one applies.
    let rv = nodes.get("n1").await.unwrap().metadata.resource_version.unwrap();
    let bad = json_patch(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/labels/x", "value": "y"}
    ]));
    let err = nodes
        .patch("n1", &PatchParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(code(&err), 422);
    let good = json_patch(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/spec/taints", "value": [{"key": "k", "effect": "NoSchedule"}]}
    ]));
    let patched = nodes.patch("n1", &PatchParams::default(), &good).await.unwrap();
    assert_eq!(patched.spec.unwrap().taints.unwrap()[0].key, "k");

    // Strategic merge replaces the taint list; merge patch removes with null.
    let smp = json!({"spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}, "metadata": {"labels": {"a": null}}});
    let n = nodes
        .patch("n1", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .unwrap();
    let taints = n.spec.unwrap().taints.unwrap();
    assert_eq!(taints.len(), 1);
    assert_eq!(taints[0].key, "other");
    assert!(!n.metadata.labels.unwrap().contains_key("a"));
    // Invalid taints are 422.
    let dup = json!({"spec": {"taints": [{"key": "d", "effect": "NoSchedule"}, {"key": "d", "effect": "NoSchedule"}]}});
    assert_eq!(
        code(
            &nodes
                .patch("n1", &PatchParams::default(), &Patch::Merge(&dup))
                .await
                .unwrap_err()
        ),
        422
    );

    // dryRun=All validates and answers without storing.
    let before = nodes.get("n1").await.unwrap();
    let dry = nodes
        .patch(
            "n1",
            &PatchParams {
                dry_run: true,
                ..Default::default()
            },
            &Patch::Merge(json!({"metadata": {"labels": {"dry": "run"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        dry.metadata.labels.unwrap().get("dry").map(String::as_str),
        Some("run")
    );
    assert_eq!(nodes.get("n1").await.unwrap(), before);
    let n2: Node = serde_json::from_value(node("n2")).unwrap();
    nodes
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &n2,
        )
        .await
        .unwrap();
    assert_eq!(code(&nodes.get("n2").await.unwrap_err()), 404);

    // Server-side apply creates and merges.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let applied = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ssa", "labels": {"x": "1"}}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
    let pp = PatchParams::apply("test").force();
    pods.patch("ssa", &pp, &Patch::Apply(&applied)).await.unwrap();
    let again = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ssa", "labels": {"y": "2"}}, "spec": {"containers": [{"name": "c", "image": "b"}]}});
    let p = pods.patch("ssa", &pp, &Patch::Apply(&again)).await.unwrap();
    let labels = p.metadata.labels.unwrap();
    assert_eq!(
        (
            labels.get("x").map(String::as_str),
            labels.get("y").map(String::as_str)
        ),
        (Some("1"), Some("2"))
    );
    assert_eq!(p.spec.unwrap().containers[0].image.as_deref(), Some("b"));

    // generateName.
    let gen_pod: Pod = serde_json::from_value(
        json!({"metadata": {"generateName": "gen-"}, "spec": {"containers": [{"name": "c"}]}}),
    )
    .unwrap();
    let g = pods.create(&PostParams::default(), &gen_pod).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));
    pods.delete("ssa", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(&pods.get("ssa").await.unwrap_err()), 404);

    // Malformed requests get a 400 Status, not a dropped connection.
    let body = "{not json";
    let (status, s) = raw(
        ts.running.addr(),
        format!("POST /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "BadRequest");
    let (status, s) = raw(
        ts.running.addr(),
        "GET /api/v1/pods?labelSelector=a%20in%20b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!((status, s["code"].as_u64()), (400, Some(400)));
    let (status, _) = raw(
        ts.running.addr(),
        "GET /apis/nope/v1/things HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_and_pagination() {
    let ts = TestSim::start(SimConfig::default()).await;
    for i in 0..25 {
        let tier = ["web", "db", "cache"][i % 3];
        let mut p = running_pod(
            "default",
            &format!("p{i:02}"),
            &format!("n{}", i % 2),
            json!({"tier": tier}),
        );
        if i % 5 == 0 {
            p["metadata"]["labels"]["canary"] = json!("true");
            p["status"]["phase"] = json!("Pending");
        }
        ts.sim().insert(p).unwrap();
    }
    let pods: Api<Pod> = Api::all(ts.client());
    let count = |lp: ListParams| {
        let pods = pods.clone();
        async move { pods.list(&lp).await.unwrap().items.len() }
    };
    assert_eq!(count(ListParams::default().labels("tier in (web,db)")).await, 17);
    assert_eq!(
        count(ListParams::default().labels("tier notin (web,db)")).await,
        8
    );
    assert_eq!(count(ListParams::default().labels("!canary")).await, 20);
    assert_eq!(count(ListParams::default().labels("canary,tier=web")).await, 2);
    assert_eq!(count(ListParams::default().fields("spec.nodeName=n1")).await, 12);
    assert_eq!(
        count(ListParams::default().fields("status.phase=Pending")).await,
        5
    );
    assert_eq!(
        count(ListParams::default().fields("metadata.name=p03,metadata.namespace=default")).await,
        1
    );
    let mut lp = ListParams::default().limit(10);
    let mut names = Vec::new();
    loop {
        let page = pods.list(&lp).await.unwrap();
        assert!(page.items.len() <= 10);
        names.extend(page.items.iter().map(|p| p.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(names.len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lists_then_watches_and_recovers_from_gone() {
    // A tiny history: a watch resumed from an old resourceVersion gets 410 and relists.
    let ts = TestSim::start(SimConfig {
        history: 16,
        bookmark_interval: Duration::from_millis(100),
        ..SimConfig::default()
    })
    .await;
    ts.sim()
        .insert(running_pod("default", "first", "n1", json!({"app": "w"})))
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(ts.client(), "default");
    let stream = watcher(pods.clone(), watcher::Config::default().labels("app=w"))
        .default_backoff()
        .applied_objects();
    let mut stream = Box::pin(stream);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("first"));
    for i in 0..40 {
        ts.sim()
            .insert(running_pod(
                "default",
                &format!("later-{i:02}"),
                "n1",
                json!({"app": "w"}),
            ))
            .unwrap();
    }
    ts.sim()
        .insert(running_pod("default", "unrelated", "n1", json!({"app": "other"})))
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut gone = 0;
    while seen.len() < 40 {
        // The watch resumes from a compacted resourceVersion: the watcher surfaces the 410
        // and relists.
        let p = match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            Ok(p) => p,
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                gone += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let name = p.metadata.name.unwrap();
        assert_ne!(name, "unrelated");
        if name.starts_with("later-") {
            seen.insert(name);
        }
    }
    assert!(gone >= 1, "the watch hit 410 Gone and recovered by relisting");

    // Streaming lists (sendInitialEvents): initial ADDED events, then the
    // initial-events-end bookmark, then changes.
    let streaming = watcher(
        pods.clone(),
        watcher::Config::default().labels("app=w").streaming_lists(),
    );
    let mut streaming = Box::pin(reflector_names(streaming));
    let names = tokio::time::timeout(Duration::from_secs(10), streaming.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names.len(), 41, "{names:?}");

    // Raw watch from a compacted resourceVersion: an ERROR event with a 410 Status.
    let (status, _) = {
        let req = "GET /api/v1/namespaces/default/pods?watch=true&resourceVersion=2&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut s = tokio::net::TcpStream::connect(ts.running.addr()).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        assert!(
            text.contains("\"type\":\"ERROR\"") && text.contains("\"code\":410"),
            "{text}"
        );
        (200, ())
    };
    assert_eq!(status, 200);

    // Bookmarks and DELETED events on a kube-rs raw watch.
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = kube::api::WatchParams::default().timeout(2).labels("app=w");
    let events = pods.watch(&wp, &rv).await.unwrap();
    let mut events = Box::pin(events);
    ts.sim().delete("v1", "Pod", "default", "first").unwrap();
    let mut deleted = false;
    let mut bookmark = false;
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
    {
        match ev.unwrap() {
            kube::api::WatchEvent::Deleted(p) => deleted |= p.metadata.name.as_deref() == Some("first"),
            kube::api::WatchEvent::Bookmark(_) => bookmark = true,
            _ => {}
        }
        if deleted && bookmark {
            break;
        }
    }
    assert!(deleted && bookmark, "deleted={deleted} bookmark={bookmark}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_become_served_and_discoverable() {
    let ts = TestSim::start(SimConfig::default()).await;
    let client = ts.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "nodepools.spot.example.com"},
        "spec": {"group": "spot.example.com", "scope": "Cluster",
            "names": {"plural": "nodepools", "singular": "nodepool", "kind": "NodePool", "shortNames": ["np"]},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}, "subresources": {"status": {}}}]}
    }))
    .unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = created
        .status
        .unwrap()
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "NodePool")
        .expect("NodePool is discoverable");
    assert_eq!(ar.plural, "nodepools");
    assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
    let gvk = GroupVersionKind::gvk("spot.example.com", "v1", "NodePool");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let obj: DynamicObject = serde_json::from_value(json!({"apiVersion": "spot.example.com/v1", "kind": "NodePool", "metadata": {"name": "default"}, "spec": {"limits": {"cpu": "1000"}}})).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let got = api.get("default").await.unwrap();
    assert_eq!(got.data["spec"]["limits"]["cpu"], "1000");
    crds.delete("nodepools.spot.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(code(&api.get("default").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_eviction_dry_run_preconditions_and_delete_collection() {
    let ts = TestSim::start(SimConfig::default()).await;
    for i in 0..4 {
        ts.sim()
            .insert(running_pod(
                "default",
                &format!("p{i}"),
                "n1",
                json!({"batch": (i % 2).to_string()}),
            ))
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(ts.client(), "default");

    // Status goes through the status subresource only.
    let main = pods
        .patch(
            "p0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(main.status.unwrap().phase.as_deref(), Some("Running"));
    let st = pods
        .patch_status(
            "p0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().phase.as_deref(), Some("Failed"));

    // A dry-run eviction leaves the pod; a real one removes it.
    let body = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p1", "namespace": "default"}});
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let _: kube::core::Status = pods
        .create_subresource("eviction", "p1", &dry, &body)
        .await
        .unwrap();
    assert!(pods.get("p1").await.is_ok());
    let _: kube::core::Status = pods
        .create_subresource("eviction", "p1", &PostParams::default(), &body)
        .await
        .unwrap();
    assert_eq!(code(&pods.get("p1").await.unwrap_err()), 404);
    let missing = pods
        .create_subresource::<_, kube::core::Status>("eviction", "p1", &PostParams::default(), &body)
        .await;
    assert_eq!(code(&missing.unwrap_err()), 404);

    // Delete preconditions.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(code(&pods.delete("p2", &dp).await.unwrap_err()), 409);
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    pods.delete("p2", &dry_delete).await.unwrap();
    assert!(pods.get("p2").await.is_ok());

    // deletecollection with a selector.
    pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("batch=0"))
        .await
        .unwrap();
    let left: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(left, ["p3"]);
}
