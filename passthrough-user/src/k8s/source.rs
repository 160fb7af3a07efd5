//! The Kubernetes source: watches MeshPassthrough objects, this node's pods, namespaces and
//! services with kube-rs reflectors, and hands the agent what they mean: policies (as
//! documents, so an invalid object is refused like an invalid file) and workloads (the pods
//! in the mesh, with their cgroup).
//!
//! The API server going away changes nothing in the kernel: the last state stays, the
//! watchers retry with backoff and relist (also after `410 Gone`), and `/status` says so.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::{
    api::core::v1::{Event, EventSource, Namespace, ObjectReference, Pod, Service},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::mpsc;

use super::{KubeProblem, KubeState, PendingPod, cgroups::PodCgroups, pods};
use crate::{
    config::WorkloadConfig,
    policy::{
        load::{Document, parse_policy},
        model::Source,
    },
};

/// The agent's latest list of refused MeshPassthrough objects, and a wake-up for the task
/// that reports them.
#[derive(Default)]
pub struct Problems {
    list: std::sync::Mutex<Vec<KubeProblem>>,
    changed: tokio::sync::Notify,
}

impl Problems {
    pub fn set(&self, problems: Vec<KubeProblem>) {
        let mut list = self
            .list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *list != problems {
            *list = problems;
            self.changed.notify_one();
        }
    }

    fn get(&self) -> Vec<KubeProblem> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Posts a Warning Event on each refused object, once per distinct message, so
/// `kubectl describe meshpassthrough` shows why it is not applied.
async fn report(client: Client, problems: Arc<Problems>) {
    let mut posted: std::collections::HashSet<KubeProblem> = Default::default();
    loop {
        problems.changed.notified().await;
        for p in problems.get() {
            if posted.contains(&p) {
                continue;
            }
            let api: Api<Event> = Api::namespaced(client.clone(), &p.namespace);
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            let mut message = p.message.clone();
            message.truncate(1024);
            let event = Event {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}.", p.name)),
                    namespace: Some(p.namespace.clone()),
                    ..ObjectMeta::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("kuma.io/v1alpha1".into()),
                    kind: Some("MeshPassthrough".into()),
                    name: Some(p.name.clone()),
                    namespace: Some(p.namespace.clone()),
                    ..ObjectReference::default()
                },
                reason: Some("InvalidPolicy".into()),
                message: Some(format!(
                    "passthrough refused this policy (every workload keeps its last good state): {message}"
                )),
                type_: Some("Warning".into()),
                source: Some(EventSource {
                    component: Some("passthrough".into()),
                    ..EventSource::default()
                }),
                reporting_component: Some("passthrough".into()),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                ..Event::default()
            };
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    posted.insert(p);
                }
                Err(e) => tracing::warn!(
                    "could not post an Event on MeshPassthrough {}/{}: {e}",
                    p.namespace,
                    p.name
                ),
            }
        }
    }
}

/// How long the source waits for the next change of a burst before telling the agent: a
/// relist or a batch of watch events arrives back to back, well within it. The agent folds
/// whatever queues up while it reconciles into one pass, so a short wait costs no extra
/// reconciles; every millisecond of it is a millisecond before a change reaches the kernel.
const SETTLE: Duration = Duration::from_millis(2);
/// The longest a burst is gathered before the agent is told anyway.
const SETTLE_MAX: Duration = Duration::from_millis(20);
/// How often pods whose cgroup is not there yet are looked at again.
const CGROUP_RETRY: Duration = Duration::from_millis(250);

/// Which collection an item came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    Pods,
    Namespaces,
    Services,
    Policies,
    Dataplanes,
}

/// Every collection; the source is synced once each has been listed.
const FEEDS: usize = 5;

/// What one reflector stream reported.
enum Item {
    /// The collection was (re)listed completely.
    Listed(Feed),
    /// An object of the collection changed.
    Changed(Feed),
    /// A pod cgroup may have appeared (inotify, or the periodic look).
    Cgroups,
    Failed(String),
    /// The collection's API does not exist (a CRD that is not installed).
    Absent(Feed),
}

fn feed<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    which: Feed,
) -> BoxStream<'static, Item>
where
    K: Send + 'static,
{
    stream
        .map(move |r| match r {
            Ok(watcher::Event::InitDone) => Item::Listed(which),
            Ok(_) => Item::Changed(which),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                Item::Absent(which)
            }
            Err(e) => Item::Failed(format!("{which:?}: {e}")),
        })
        .boxed()
}

/// A client from the kubeconfig file, or the in-cluster account, or `KUBECONFIG`.
async fn client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs until the agent goes away (`send` says `false`). `root` is where pod cgroups are
/// looked up. Each state goes straight to `send` (the agent's core queue, which never
/// blocks): no task or channel in between to wake on the way.
pub async fn run(
    node: String,
    root: PathBuf,
    kubeconfig: Option<PathBuf>,
    problems: Arc<Problems>,
    send: impl Fn(KubeState) -> bool,
) {
    let client = match client(kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            send(KubeState {
                error: Some(format!(
                    "no Kubernetes client (in-cluster service account or KUBECONFIG): {e}"
                )),
                ..KubeState::default()
            });
            return;
        }
    };
    tokio::spawn(report(client.clone(), problems));
    let pods_api: Api<Pod> = Api::all(client.clone());
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let svc_api: Api<Service> = Api::all(client.clone());
    let gvk = GroupVersionKind::gvk("kuma.io", "v1alpha1", "MeshPassthrough");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "meshpassthroughs");
    let mp_api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let dp_gvk = GroupVersionKind::gvk("kuma.io", "v1alpha1", "Dataplane");
    let dp_ar = ApiResource::from_gvk_with_plural(&dp_gvk, "dataplanes");
    let dp_api: Api<DynamicObject> = Api::all_with(client, &dp_ar);

    let (pods, pods_w) = reflector::store();
    let (namespaces, ns_w) = reflector::store();
    let (services, svc_w) = reflector::store();
    let mp_w = reflector::store::Writer::new(ar.clone());
    let policies = mp_w.as_reader();
    let dp_w = reflector::store::Writer::new(dp_ar.clone());
    let dataplanes = dp_w.as_reader();
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut items = futures::stream::select_all([
        feed(
            reflector::reflector(pods_w, watcher(pods_api, on_node)).default_backoff(),
            Feed::Pods,
        ),
        feed(
            reflector::reflector(ns_w, watcher(ns_api, watcher::Config::default()))
                .default_backoff(),
            Feed::Namespaces,
        ),
        feed(
            reflector::reflector(svc_w, watcher(svc_api, watcher::Config::default()))
                .default_backoff(),
            Feed::Services,
        ),
        feed(
            reflector::reflector(mp_w, watcher(mp_api, watcher::Config::default()))
                .default_backoff(),
            Feed::Policies,
        ),
        feed(
            reflector::reflector(dp_w, watcher(dp_api, watcher::Config::default()))
                .default_backoff(),
            Feed::Dataplanes,
        ),
    ]);
    // Whether Kuma's Dataplane CRD exists: then Kuma's control plane decides membership.
    let mut kuma_manages = true;
    // New pod cgroups wake the loop at once (the periodic look stays as a fallback).
    let (new_cgroup_tx, mut new_cgroups) = mpsc::channel(16);
    match super::cgroups::kubepods_root(&root) {
        Some(kubepods) => {
            if let Err(e) = super::inotify::watch(kubepods, new_cgroup_tx) {
                tracing::warn!("watching for new pod cgroups: {e}; looking every {CGROUP_RETRY:?}");
            }
        }
        None => drop(new_cgroup_tx),
    }
    let mut listed: Vec<Feed> = Vec::new();
    let mut error: Option<String> = None;
    let mut waiting_for_cgroups = false;
    let mut cgroups = PodCgroups::new(root);
    // The pods' part of the last state sent: a batch of policy changes only reuses it, so a
    // policy change reaches the agent without the pods being looked at again.
    let mut last_pods: Option<KubeState> = None;
    loop {
        let item = tokio::select! {
            i = items.next() => i,
            Some(()) = new_cgroups.recv() => Some(Item::Cgroups),
            () = tokio::time::sleep(CGROUP_RETRY), if waiting_for_cgroups => Some(Item::Cgroups),
        };
        let Some(first) = item else { return };
        let mut batch = vec![first];
        // Gather the rest of a burst.
        let until = tokio::time::Instant::now() + SETTLE_MAX;
        while let Ok(Some(i)) = tokio::time::timeout(
            SETTLE.min(until.saturating_duration_since(tokio::time::Instant::now())),
            items.next(),
        )
        .await
        {
            batch.push(i);
        }
        let gathered = std::time::Instant::now();
        let mut pods_changed = false;
        for i in batch {
            pods_changed |= !matches!(
                i,
                Item::Changed(Feed::Policies) | Item::Listed(Feed::Policies)
            );
            match i {
                Item::Listed(f) => {
                    if !listed.contains(&f) {
                        listed.push(f);
                    }
                    error = None;
                }
                Item::Changed(_) | Item::Cgroups => {}
                Item::Absent(f) => {
                    // No Kuma here: membership comes from the injection labels.
                    if f == Feed::Dataplanes {
                        kuma_manages = false;
                    }
                    if !listed.contains(&f) {
                        listed.push(f);
                    }
                }
                Item::Failed(e) => {
                    tracing::warn!("Kubernetes watch: {e}; retrying, enforcement unchanged");
                    error = Some(e);
                }
            }
        }
        let dataplanes = kuma_manages.then_some(&dataplanes);
        let pod_part = match last_pods.take() {
            Some(p) if !pods_changed => p,
            _ => {
                let (p, missing) =
                    pod_state(&pods, &namespaces, &services, dataplanes, &mut cgroups);
                waiting_for_cgroups = missing;
                p
            }
        };
        last_pods = Some(pod_part.clone());
        let state = KubeState {
            policies: policies.state().iter().map(|o| document(o)).collect(),
            synced: listed.len() == FEEDS,
            connected: error.is_none(),
            error: error.clone(),
            ..pod_part
        };
        tracing::debug!(
            pods = state.workloads.len(),
            pending = state.pending.len(),
            pods_looked_at = pods_changed,
            took_us = gathered.elapsed().as_micros(),
            "Kubernetes state computed"
        );
        if !send(state) {
            return;
        }
    }
}

/// The workloads the stores describe now (the pods' part of the state: no policies);
/// `true` when a pod in the mesh has no cgroup yet.
fn pod_state(
    pods: &Store<Pod>,
    namespaces: &Store<Namespace>,
    services: &Store<Service>,
    dataplanes: Option<&Store<DynamicObject>>,
    cgroups: &mut PodCgroups,
) -> (KubeState, bool) {
    // Where Kuma writes Dataplanes, exactly the pods that have one are in the mesh.
    let dataplanes: Option<Vec<pods::DataplaneInfo>> = dataplanes
        .map(|s| s.state().iter().filter_map(|d| dataplane_info(d)).collect())
        .filter(|d: &Vec<_>| !d.is_empty());
    let services: Vec<Service> = services.state().iter().map(|s| (**s).clone()).collect();
    let settings = pods::KumaSettings::default();
    let mut workloads = Vec::new();
    let mut others = Vec::new();
    let mut pending = Vec::new();
    let mut missing = false;
    // Each namespace once, by name, rather than a fresh copy of the store per pod.
    let namespaces: std::collections::HashMap<String, Arc<Namespace>> = namespaces
        .state()
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n)))
        .collect();
    let pods = pods.state();
    cgroups.keep_only(&pods.iter().filter_map(|p| pods::pod_uid(p)).collect());
    for pod in pods {
        let ns = pod
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| namespaces.get(n));
        let cx = pods::Context {
            namespace: ns.map(|n| &**n),
            services: &services,
            node: None,
            settings: &settings,
        };
        let membership = match &dataplanes {
            None => pods::Membership::Injection,
            Some(dps) => pods::Membership::Dataplane(dps.iter().find(|d| {
                Some(d.namespace.as_str()) == pod.metadata.namespace.as_deref()
                    && Some(d.name.as_str()) == pod.metadata.name.as_deref()
            })),
        };
        let Ok(w) = pods::workload_of(&pod, &cx, membership) else {
            // Known, and not in the mesh: left alone even where unknown pods are denied.
            if let Some(cgroup) = pods::pod_uid(&pod).and_then(|uid| cgroups.get(uid)) {
                others.push(cgroup);
            }
            continue;
        };
        let Some(cgroup) = pods::pod_uid(&pod).and_then(|uid| cgroups.get(uid)) else {
            missing = true;
            if let Some(uid) = pods::pod_uid(&pod).and_then(passthrough_common::PodUid::parse) {
                pending.push(PendingPod {
                    uid,
                    label: format!(
                        "{}/{}",
                        w.namespace.as_deref().unwrap_or(""),
                        w.name.as_deref().unwrap_or("")
                    ),
                    identity: w,
                });
            }
            continue;
        };
        workloads.push(WorkloadConfig {
            cgroup,
            mesh: w.mesh,
            proxy_type: w.proxy_type,
            tags: w.tags,
            name: w.name,
            namespace: w.namespace,
            labels: w.labels,
            audit: false,
            udp: None,
            raw_sockets: None,
        });
    }
    (
        KubeState {
            workloads,
            pending,
            others,
            ..KubeState::default()
        },
        missing,
    )
}

/// The identity a Kuma `Dataplane` object gives its pod: mesh, proxy type, the tags of its
/// inbounds (or its gateway), its labels.
fn dataplane_info(d: &DynamicObject) -> Option<pods::DataplaneInfo> {
    let tags = |v: &serde_json::Value| -> std::collections::BTreeMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let networking = &d.data["spec"]["networking"];
    let gateway = &networking["gateway"];
    let (proxy_type, inbound_tags) = if gateway.is_object() {
        (
            crate::policy::workload::ProxyType::Gateway,
            vec![tags(&gateway["tags"])],
        )
    } else {
        (
            crate::policy::workload::ProxyType::Sidecar,
            networking["inbound"]
                .as_array()
                .map(|a| a.iter().map(|i| tags(&i["tags"])).collect())
                .unwrap_or_default(),
        )
    };
    Some(pods::DataplaneInfo {
        name: d.metadata.name.clone()?,
        namespace: d.metadata.namespace.clone()?,
        mesh: d.data["mesh"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or("default")
            .to_string(),
        proxy_type,
        inbound_tags,
        labels: d.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A MeshPassthrough object as the policy engine reads a Kubernetes-form document: its
/// name, namespace, labels and spec (the server-side metadata is not policy).
fn document(o: &DynamicObject) -> Document {
    let name = o.metadata.name.clone().unwrap_or_default();
    let namespace = o.metadata.namespace.clone();
    let mut metadata = json!({ "name": name });
    if let Some(ns) = &namespace {
        metadata["namespace"] = json!(ns);
    }
    if let Some(labels) = &o.metadata.labels {
        metadata["labels"] = json!(labels);
    }
    let object = json!({
        "apiVersion": "kuma.io/v1alpha1",
        "kind": "MeshPassthrough",
        "metadata": metadata,
        "spec": o.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    });
    let source = Source::kubernetes(namespace.as_deref().unwrap_or(""), &name);
    let value = serde_yaml::to_value(&object).unwrap_or(serde_yaml::Value::Null);
    match parse_policy(source, value) {
        Ok(p) => Document::Policy(Box::new(p)),
        Err(e) => Document::Invalid(e),
    }
}
