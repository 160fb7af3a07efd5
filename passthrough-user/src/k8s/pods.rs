//! Pods as workloads: which pods are in a mesh, and the identity Kuma gives them.
//!
//! Pure functions over `k8s-openapi` objects, so every rule is unit-tested without a cluster;
//! watching pods, namespaces, services, nodes and `Dataplane`s is the caller's job.
//!
//! The rules are those of Kuma v2.14.3 (`pkg/plugins/runtime/k8s`), the version the spec follows:
//! - membership: the injector's `needToInject` (`webhooks/injector/precheck.go`) and the pod
//!   controller's conditions (`controllers/pod_controller.go`), or, where Kuma's control plane
//!   runs, exactly the pods that have a `Dataplane` ([`Membership`]);
//! - mesh: `MeshOfByLabelOrAnnotation` (`util/util.go`);
//! - tags: `InboundTagsForService` and `InboundTagsForPod` (`controllers/inbound_converter.go`);
//! - labels: `resource_labels.Compute` as `PodToDataplane` calls it.
//!
//! Passthrough adds four conditions of its own before any of these: a pod must be scheduled,
//! must not use the host network (its cgroup's sockets are the node's), must not be in
//! `kube-system`, and must not have finished.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, Service, ServicePort},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::policy::{
    model::DEFAULT_MESH,
    workload::{NAMESPACE_TAG, ProxyType, Workload},
};

/// Pod or namespace label that turns sidecar injection on or off. Kuma reads it as a label
/// only: its support as a pod annotation was removed in Kuma 2.2 (kumahq/kuma#6225), and
/// v2.14 merely logs "you are using kuma.io/sidecar-injection as annotation. This is not
/// supported", so the annotation is ignored here too.
pub const SIDECAR_INJECTION: &str = "kuma.io/sidecar-injection";
/// Annotation Kuma's injector puts on the pods it injected; its pod controller creates a
/// `Dataplane` for exactly these pods, whatever the injection labels say later.
pub const SIDECAR_INJECTED: &str = "kuma.io/sidecar-injected";
/// Label (and deprecated annotation) naming a pod's or a namespace's mesh.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// Pod annotation that makes the dataplane a gateway: `enabled` or `provided` (delegated),
/// `builtin` (Kuma's built-in gateway).
pub const GATEWAY_ANNOTATION: &str = "kuma.io/gateway";
/// Service annotation that hides a Service from Kuma.
pub const IGNORE_ANNOTATION: &str = "kuma.io/ignore";
/// Namespace whose pods passthrough never treats as workloads.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

/// Inbound tag `<service>_<namespace>_svc_<port>`.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// Inbound tag: the Kubernetes Service's name.
pub const SERVICE_NAME_TAG: &str = "k8s.kuma.io/service-name";
/// Inbound tag: the Service port (`port`, not `targetPort`).
pub const SERVICE_PORT_TAG: &str = "k8s.kuma.io/service-port";
/// Inbound tag: the port's protocol (`tcp` unless `appProtocol` or an annotation says otherwise).
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";
/// Inbound tag: the pod name, for headless Services and service-less pods.
pub const INSTANCE_TAG: &str = "kuma.io/instance";
/// Inbound tag and dataplane label: the Kuma zone.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// Pod labels that exempt a pod from injection in Kuma's default configuration
/// (`runtime.kubernetes.injector.exceptions.labels`, any value): OpenShift build and deployer pods.
const INJECTION_EXCEPTIONS: [&str; 2] = [
    "openshift.io/build.name",
    "openshift.io/deployer-pod-for.name",
];

/// Protocols Kuma takes from a Service port's `appProtocol` (`core_meta.ParseProtocol`); any
/// other `appProtocol` is ignored.
const KNOWN_PROTOCOLS: [&str; 7] = ["http", "http2", "tcp", "tls", "grpc", "kafka", "mysql"];

static NO_STRINGS: BTreeMap<String, String> = BTreeMap::new();

/// Why a pod is not a workload. The `Display` text is meant for logs and `status`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotInMesh {
    #[error("pod has no name or no namespace")]
    Unnamed,
    #[error("pod is not scheduled yet (spec.nodeName is empty)")]
    NotScheduled,
    #[error("pod uses the host network (spec.hostNetwork), whose sockets are the node's")]
    HostNetwork,
    #[error("pod is in namespace {SYSTEM_NAMESPACE}")]
    SystemNamespace,
    #[error("pod has finished (status.phase Succeeded or Failed)")]
    Finished,
    #[error(
        "not injected: no {SIDECAR_INJECTION}: enabled label on the pod or its namespace, or the pod opts out"
    )]
    NotInjected,
    #[error("{object} {key} has value {value:?}, which Kuma rejects (use {expected})")]
    InvalidValue {
        /// `pod label`, `namespace label` or `pod annotation`.
        object: &'static str,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("pod is a Kuma built-in gateway, which MeshPassthrough does not apply to")]
    BuiltinGateway,
    #[error("Kuma's control plane manages Dataplanes and this pod has none")]
    NoDataplane,
}

/// The parts of a Kuma `Dataplane` object that make up a workload's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneInfo {
    /// `metadata.name` (Kuma names a pod's Dataplane after the pod).
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// The Dataplane's `mesh` field.
    pub mesh: String,
    /// `Gateway` when `spec.networking.gateway` is set.
    pub proxy_type: ProxyType,
    /// `spec.networking.inbound[].tags`, in order; for a gateway, its `networking.gateway.tags`
    /// as the only element.
    pub inbound_tags: Vec<BTreeMap<String, String>>,
    /// `metadata.labels`, which `Dataplane` targetRefs with `labels` compare with.
    pub labels: BTreeMap<String, String>,
}

/// Who decides which pods are in the mesh.
#[derive(Clone, Copy, Debug)]
pub enum Membership<'a> {
    /// No Kuma control plane writes `Dataplane`s here: decide from the injection labels, and
    /// compute the identity as Kuma would.
    Injection,
    /// Kuma's control plane writes `Dataplane`s: exactly the pods that have one are in the
    /// mesh, with its identity. The argument is this pod's (same namespace and name), if any.
    Dataplane(Option<&'a DataplaneInfo>),
}

/// Settings of Kuma's control plane that shape a Kubernetes dataplane's tags and labels.
/// `Default` gives Kuma's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KumaSettings {
    /// `multizone.zone.name` (default `default`): the `kuma.io/zone` tag of every inbound and
    /// label of every dataplane. Empty: neither is added.
    pub zone: String,
    /// `runtime.kubernetes.injector.nodeLabelsToCopy`: labels of the pod's node copied onto
    /// every inbound's tags (they override pod labels of the same key, as in Kuma).
    pub node_labels_to_copy: Vec<String>,
}

impl Default for KumaSettings {
    fn default() -> Self {
        Self {
            zone: "default".into(),
            node_labels_to_copy: [
                "topology.kubernetes.io/zone",
                "topology.kubernetes.io/region",
                "kubernetes.io/hostname",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// What Kuma reads besides the pod itself.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The pod's namespace; `None` (not seen yet) counts as a namespace without labels.
    pub namespace: Option<&'a Namespace>,
    /// Services of the cluster; only those of the pod's namespace are considered.
    pub services: &'a [Service],
    /// The pod's node, for `node_labels_to_copy`; `None` copies nothing.
    pub node: Option<&'a Node>,
    pub settings: &'a KumaSettings,
}

/// The pod's UID, which names its cgroup (see [`super::cgroups`]).
pub fn pod_uid(pod: &Pod) -> Option<&str> {
    pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty())
}

/// The workload a pod is, or why it is none.
///
/// Checks, in order: name and namespace present, scheduled, not host network, not in
/// `kube-system`, not finished, not a built-in gateway, then membership, then (computed
/// identity only) a valid `kuma.io/gateway` annotation.
///
/// With [`Membership::Injection`] (Kuma's `needToInject` plus its pod controller):
/// - a pod annotated `kuma.io/sidecar-injected: "true"` was injected by Kuma: in the mesh;
/// - a pod with one of Kuma's default injection-exception labels is not;
/// - the pod's label `kuma.io/sidecar-injection` decides if present (`enabled` opts in
///   whatever the namespace says, `disabled` opts out), else the namespace's label, else
///   the pod is not in the mesh. Values are compared case-sensitively as Kuma's
///   `GetEnabled` does: `enabled`, `true`, `yes` are on; `disabled`, `false`, `no` are off;
///   anything else makes Kuma's injector fail, so the pod is not in the mesh
///   ([`NotInMesh::InvalidValue`]).
///
/// The identity is then Kuma's:
/// - mesh: the pod's label `kuma.io/mesh`, else its (deprecated) annotation, else the
///   namespace's label, else the namespace's annotation, else `default` (empty values skipped);
/// - tags: see [`tags_of`] over [`inbound_tags`];
/// - name: the pod's name; namespace: the pod's namespace;
/// - labels: the pod's labels plus those Kuma computes for a zone-created Dataplane
///   (`kuma.io/mesh`, `k8s.kuma.io/namespace`, `kuma.io/origin: zone`, `kuma.io/zone`,
///   `kuma.io/env: kubernetes`, `kuma.io/proxy-type`, `k8s.kuma.io/service-account`,
///   `kuma.io/workload`); pod labels win for the first five, as Kuma's `setIfNotExist` does.
///
/// With [`Membership::Dataplane`], a pod without a Dataplane is [`NotInMesh::NoDataplane`];
/// with one, the identity is the Dataplane's own (mesh, proxy type, name, namespace, labels),
/// its tags being [`tags_of`] its inbounds' tags.
pub fn workload_of(
    pod: &Pod,
    cx: &Context<'_>,
    membership: Membership<'_>,
) -> Result<Workload, NotInMesh> {
    let (name, namespace) = candidate(pod)?;
    // Kuma gives built-in gateways a Dataplane, without injection; MeshPassthrough skips them.
    let gateway = gateway_kind(pod);
    if gateway == Ok(Some(Gateway::Builtin)) {
        return Err(NotInMesh::BuiltinGateway);
    }
    match membership {
        Membership::Dataplane(None) => Err(NotInMesh::NoDataplane),
        Membership::Dataplane(Some(dp)) => Ok(Workload {
            mesh: dp.mesh.clone(),
            proxy_type: dp.proxy_type,
            tags: tags_of(&dp.inbound_tags),
            name: Some(dp.name.clone()),
            namespace: Some(dp.namespace.clone()),
            labels: dp.labels.clone(),
        }),
        Membership::Injection => {
            injected(pod, cx.namespace)?;
            let gateway = gateway?;
            let mesh = mesh_of(pod, cx.namespace);
            let (proxy_type, tags) = match gateway {
                None => (ProxyType::Sidecar, tags_of(&inbound_tags(pod, cx))),
                Some(kind) => (ProxyType::Gateway, gateway_tags(pod, namespace, kind, cx)),
            };
            let labels = dataplane_labels(pod, namespace, &mesh, proxy_type, cx.settings);
            Ok(Workload {
                mesh,
                proxy_type,
                tags,
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels,
            })
        }
    }
}

/// One tag map per inbound Kuma generates for the pod, in Kuma's order.
///
/// Services of the pod's namespace are taken in name order (Kuma sorts them so that inbounds
/// are alike across zones), each Service's ports in declaration order. A Service counts when
/// it is not annotated `kuma.io/ignore`, is not `ExternalName`, and has a non-empty selector
/// whose every label the pod has. A Service without a selector selects nothing here: Kuma
/// would look the pod up in its EndpointSlices, which this pure function does not have. A
/// port counts when its protocol is TCP (or unset) and, for a named `targetPort`, a container
/// of the pod has a TCP port of that name (Kuma's `FindPort`).
///
/// Each (Service, port) inbound's tags: the pod's labels with a non-empty value and a key not
/// containing `kuma.io/`; `kuma.io/service: <service>_<namespace>_svc_<port>`,
/// `k8s.kuma.io/namespace`, `k8s.kuma.io/service-name`, `k8s.kuma.io/service-port: <port>`
/// (the Service `port`, not `targetPort`); `kuma.io/zone` if a zone is set; the node labels to
/// copy; `kuma.io/protocol` (the port's `appProtocol` if Kuma knows it, else the Service
/// annotation `<port>.service.kuma.io/protocol`, else `tcp`, lowercased; left out for a
/// delegated gateway when not `tcp`); `kuma.io/instance: <pod>` for a headless Service.
///
/// A pod no Service port selects gets one inbound: its labels with a non-empty value,
/// `k8s.kuma.io/namespace`, `kuma.io/service: <owner>_<namespace>_svc`, `kuma.io/zone`,
/// `kuma.io/protocol: tcp`, `kuma.io/instance: <pod>` and the node labels. `<owner>` is the
/// name Kuma's `NameExtractor` gives the pod's workload: its Deployment, else its first
/// owner, else the pod. Kuma reads the owner chain from the API server; this pure function
/// recognises a Deployment's ReplicaSet by the `pod-template-hash` label instead, so a Job
/// of a CronJob is named after the Job here (Kuma: the CronJob).
///
/// Kuma selects a dataplane with `MeshSubset` if any one inbound's tags contain all the
/// policy's tags; this list is what that test needs.
pub fn inbound_tags(pod: &Pod, cx: &Context<'_>) -> Vec<BTreeMap<String, String>> {
    let Ok((name, namespace)) = names(pod) else {
        return Vec::new();
    };
    let node_labels = node_labels(cx);
    let labels = labels(&pod.metadata);
    let delegated_gateway = annotations(&pod.metadata)
        .get(GATEWAY_ANNOTATION)
        .and_then(|v| kuma_bool(v))
        == Some(true);

    let mut inbounds = Vec::new();
    for svc in selecting_services(pod, namespace, cx.services) {
        let Some((svc_name, spec)) = svc.metadata.name.as_deref().zip(svc.spec.as_ref()) else {
            continue;
        };
        let headless = spec.cluster_ip.as_deref() == Some("None");
        for port in spec.ports.iter().flatten() {
            if !is_tcp(port.protocol.as_deref()) || !target_port_found(pod, port) {
                continue;
            }
            let mut tags: BTreeMap<String, String> = labels
                .iter()
                .filter(|(k, v)| !v.is_empty() && !k.contains("kuma.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            tags.insert(NAMESPACE_TAG.into(), namespace.into());
            tags.insert(SERVICE_NAME_TAG.into(), svc_name.into());
            tags.insert(SERVICE_PORT_TAG.into(), port.port.to_string());
            tags.insert(
                SERVICE_TAG.into(),
                format!("{svc_name}_{namespace}_svc_{}", port.port),
            );
            if !cx.settings.zone.is_empty() {
                tags.insert(ZONE_TAG.into(), cx.settings.zone.clone());
            }
            tags.extend(node_labels.clone());
            let protocol = protocol_of(svc, port);
            if !(delegated_gateway && protocol != "tcp") {
                tags.insert(PROTOCOL_TAG.into(), protocol);
            }
            if headless {
                tags.insert(INSTANCE_TAG.into(), name.into());
            }
            inbounds.push(tags);
        }
    }
    if inbounds.is_empty() {
        let mut tags: BTreeMap<String, String> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.insert(NAMESPACE_TAG.into(), namespace.into());
        tags.insert(
            SERVICE_TAG.into(),
            format!("{}_{namespace}_svc", owner_name(pod).0),
        );
        if !cx.settings.zone.is_empty() {
            tags.insert(ZONE_TAG.into(), cx.settings.zone.clone());
        }
        tags.insert(PROTOCOL_TAG.into(), "tcp".into());
        tags.insert(INSTANCE_TAG.into(), name.into());
        tags.extend(node_labels);
        inbounds.push(tags);
    }
    inbounds
}

/// The one tag map a [`Workload`] carries for a sidecar with these inbounds: their union,
/// the earliest inbound winning where two disagree.
///
/// Kuma keeps one tag map per inbound and `MeshSubset` matches if any inbound matches;
/// passthrough enforces per pod, with one map. For the common pod (one Service, one port)
/// the two are the same. With several, every key present in all inbounds (`kuma.io/service`,
/// the `k8s.kuma.io/*` tags, the labels) comes from the first inbound, that is the first
/// Service by name and its first port; a selector naming a later inbound's `kuma.io/service`
/// does not match here although it does in Kuma. Selecting on any inbound needs
/// [`inbound_tags`].
pub fn tags_of(inbounds: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut union = BTreeMap::new();
    for tags in inbounds {
        for (k, v) in tags {
            union.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    union
}

/// The name Kuma's `NameExtractor` gives a pod's workload, and whether it is a Deployment.
///
/// Kuma reads the owner chain from the API server (ReplicaSet → Deployment, Job → CronJob);
/// without I/O this uses what the pod carries: a ReplicaSet named `<deployment>-<hash>`
/// whose pods have the label `pod-template-hash: <hash>` belongs to Deployment
/// `<deployment>` (the Deployment controller names and labels them so). Where Kuma's answer
/// needs the owner object, this one differs: a Job owned by a CronJob gives the Job's name
/// (Kuma: the CronJob's), and a ReplicaSet owned by something other than a Deployment gives
/// the ReplicaSet's name (Kuma: the next owner reference, or the pod's name).
fn owner_name(pod: &Pod) -> (String, bool) {
    let Some(owner) = pod.metadata.owner_references.iter().flatten().next() else {
        return (pod.metadata.name.clone().unwrap_or_default(), false);
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = labels(&pod.metadata).get("pod-template-hash")
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|s| s.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return (deployment.to_owned(), true);
    }
    (owner.name.clone(), false)
}

/// The kinds of gateway a pod's `kuma.io/gateway` annotation makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    /// `enabled`: delegated, tagged with its first inbound.
    ByService,
    /// `provided`: delegated, tagged `kuma.io/service-name: <deployment>_<ns>_svc`.
    ByDeployment,
    /// `builtin`: Kuma's built-in gateway; MeshPassthrough's plugin skips it.
    Builtin,
}

fn gateway_kind(pod: &Pod) -> Result<Option<Gateway>, NotInMesh> {
    match annotations(&pod.metadata)
        .get(GATEWAY_ANNOTATION)
        .map(String::as_str)
    {
        None => Ok(None),
        Some("enabled") => Ok(Some(Gateway::ByService)),
        Some("provided") => Ok(Some(Gateway::ByDeployment)),
        Some("builtin") => Ok(Some(Gateway::Builtin)),
        Some(other) => Err(NotInMesh::InvalidValue {
            object: "pod annotation",
            key: GATEWAY_ANNOTATION,
            value: other.into(),
            expected: "enabled, provided or builtin",
        }),
    }
}

/// A delegated gateway's tags (Kuma's `GatewayByServiceFor` / `GatewayByDeploymentFor`).
fn gateway_tags(
    pod: &Pod,
    namespace: &str,
    kind: Gateway,
    cx: &Context<'_>,
) -> BTreeMap<String, String> {
    if kind == Gateway::ByDeployment
        && let (deployment, true) = owner_name(pod)
    {
        return BTreeMap::from([(
            "kuma.io/service-name".to_owned(),
            format!("{deployment}_{namespace}_svc"),
        )]);
    }
    inbound_tags(pod, cx).into_iter().next().unwrap_or_default()
}

fn candidate(pod: &Pod) -> Result<(&str, &str), NotInMesh> {
    let (name, namespace) = names(pod)?;
    let spec = pod.spec.as_ref();
    if spec
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
    {
        return Err(NotInMesh::NotScheduled);
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Err(NotInMesh::HostNetwork);
    }
    if namespace == SYSTEM_NAMESPACE {
        return Err(NotInMesh::SystemNamespace);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Err(NotInMesh::Finished);
    }
    Ok((name, namespace))
}

fn names(pod: &Pod) -> Result<(&str, &str), NotInMesh> {
    let name = pod.metadata.name.as_deref().filter(|s| !s.is_empty());
    let namespace = pod.metadata.namespace.as_deref().filter(|s| !s.is_empty());
    name.zip(namespace).ok_or(NotInMesh::Unnamed)
}

fn injected(pod: &Pod, namespace: Option<&Namespace>) -> Result<(), NotInMesh> {
    if annotations(&pod.metadata)
        .get(SIDECAR_INJECTED)
        .and_then(|v| kuma_bool(v))
        == Some(true)
    {
        return Ok(());
    }
    let pod_labels = labels(&pod.metadata);
    if INJECTION_EXCEPTIONS
        .iter()
        .any(|k| pod_labels.contains_key(*k))
    {
        return Err(NotInMesh::NotInjected);
    }
    let decide = |object: &'static str, labels: &BTreeMap<String, String>| {
        labels
            .get(SIDECAR_INJECTION)
            .map(|value| match kuma_bool(value) {
                Some(true) => Ok(()),
                Some(false) => Err(NotInMesh::NotInjected),
                None => Err(NotInMesh::InvalidValue {
                    object,
                    key: SIDECAR_INJECTION,
                    value: value.clone(),
                    expected: "enabled or disabled",
                }),
            })
    };
    decide("pod label", pod_labels)
        .or_else(|| namespace.and_then(|ns| decide("namespace label", labels(&ns.metadata))))
        .unwrap_or(Err(NotInMesh::NotInjected))
}

fn mesh_of(pod: &Pod, namespace: Option<&Namespace>) -> String {
    let ns_meta = namespace.map(|ns| &ns.metadata);
    [
        Some(labels(&pod.metadata)),
        Some(annotations(&pod.metadata)),
        ns_meta.map(labels),
        ns_meta.map(annotations),
    ]
    .into_iter()
    .flatten()
    .find_map(|map| map.get(MESH_LABEL).filter(|m| !m.is_empty()))
    .map_or_else(|| DEFAULT_MESH.to_owned(), Clone::clone)
}

fn dataplane_labels(
    pod: &Pod,
    namespace: &str,
    mesh: &str,
    proxy_type: ProxyType,
    settings: &KumaSettings,
) -> BTreeMap<String, String> {
    let mut out = labels(&pod.metadata).clone();
    let mut set_if_absent = |k: &str, v: &str| {
        out.entry(k.to_owned()).or_insert_with(|| v.to_owned());
    };
    set_if_absent(MESH_LABEL, mesh);
    set_if_absent("kuma.io/origin", "zone");
    if !settings.zone.is_empty() {
        set_if_absent(ZONE_TAG, &settings.zone);
    }
    set_if_absent("kuma.io/env", "kubernetes");
    set_if_absent(NAMESPACE_TAG, namespace);
    out.insert(
        "kuma.io/proxy-type".into(),
        proxy_type.as_str().to_lowercase(),
    );
    if let Some(sa) = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
    {
        out.insert("k8s.kuma.io/service-account".into(), sa.into());
        // `runtime.kubernetes.workloadLabels` is empty by default: the service account names
        // the workload.
        out.insert("kuma.io/workload".into(), sa.into());
    }
    out
}

fn selecting_services<'a>(pod: &Pod, namespace: &str, services: &'a [Service]) -> Vec<&'a Service> {
    let pod_labels = labels(&pod.metadata);
    let mut selected: Vec<&Service> = services
        .iter()
        .filter(|svc| {
            svc.metadata
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == namespace)
        })
        .filter(|svc| {
            annotations(&svc.metadata)
                .get(IGNORE_ANNOTATION)
                .and_then(|v| kuma_bool(v))
                != Some(true)
        })
        .filter(|svc| {
            svc.spec.as_ref().is_some_and(|spec| {
                spec.type_.as_deref() != Some("ExternalName")
                    && spec.selector.as_ref().is_some_and(|sel| {
                        !sel.is_empty() && sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                    })
            })
        })
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected
}

fn is_tcp(protocol: Option<&str>) -> bool {
    matches!(protocol, None | Some("" | "TCP"))
}

/// Kuma's `FindPort`: a numeric (or unset, which Kubernetes defaults to `port`) target port
/// always counts; a named one must be a TCP port of one of the pod's containers.
fn target_port_found(pod: &Pod, port: &ServicePort) -> bool {
    let Some(IntOrString::String(name)) = &port.target_port else {
        return true;
    };
    pod.spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.name.as_deref() == Some(name.as_str()) && is_tcp(p.protocol.as_deref()))
}

/// Kuma's `ProtocolTagFor`.
fn protocol_of(svc: &Service, port: &ServicePort) -> String {
    let from_app = port
        .app_protocol
        .as_deref()
        .filter(|p| KNOWN_PROTOCOLS.contains(&p.to_lowercase().as_str()));
    let annotation = format!("{}.service.kuma.io/protocol", port.port);
    from_app
        .or_else(|| {
            annotations(&svc.metadata)
                .get(&annotation)
                .map(String::as_str)
        })
        .filter(|p| !p.is_empty())
        .unwrap_or("tcp")
        .to_lowercase()
}

fn node_labels(cx: &Context<'_>) -> BTreeMap<String, String> {
    let Some(node) = cx.node else {
        return BTreeMap::new();
    };
    let labels = labels(&node.metadata);
    cx.settings
        .node_labels_to_copy
        .iter()
        .filter_map(|k| labels.get_key_value(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Kuma's `GetEnabled`: case-sensitive, with `yes`/`no` kept for compatibility.
fn kuma_bool(value: &str) -> Option<bool> {
    match value {
        "enabled" | "true" | "yes" => Some(true),
        "disabled" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.labels.as_ref().unwrap_or(&NO_STRINGS)
}

fn annotations(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    meta.annotations.as_ref().unwrap_or(&NO_STRINGS)
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    use super::*;

    fn from<T: DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    fn pod(labels: Value) -> Pod {
        from(json!({
            "metadata": {
                "name": "web-7c9d8-abcde",
                "namespace": "shop",
                "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "labels": labels
            },
            "spec": {"nodeName": "node-1", "serviceAccountName": "web", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}
            ]},
            "status": {"phase": "Running"}
        }))
    }

    fn with(mut pod: Pod, patch: impl FnOnce(&mut Pod)) -> Pod {
        patch(&mut pod);
        pod
    }

    fn namespace(labels: Value) -> Namespace {
        from(json!({"metadata": {"name": "shop", "labels": labels}}))
    }

    fn service(name: &str, selector: Value, ports: Value) -> Service {
        from(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": selector, "ports": ports}
        }))
    }

    fn injected_ns() -> Namespace {
        namespace(json!({SIDECAR_INJECTION: "enabled"}))
    }

    fn no_zone() -> KumaSettings {
        KumaSettings {
            zone: String::new(),
            node_labels_to_copy: Vec::new(),
        }
    }

    fn cx<'a>(
        ns: Option<&'a Namespace>,
        services: &'a [Service],
        settings: &'a KumaSettings,
    ) -> Context<'a> {
        Context {
            namespace: ns,
            services,
            node: None,
            settings,
        }
    }

    fn workload(
        pod: &Pod,
        ns: Option<&Namespace>,
        services: &[Service],
    ) -> Result<Workload, NotInMesh> {
        workload_of(pod, &cx(ns, services, &no_zone()), Membership::Injection)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn pod_opting_in_joins_the_mesh_in_a_plain_namespace() {
        let p = pod(json!({"app": "web", SIDECAR_INJECTION: "enabled"}));
        let w = workload(&p, Some(&namespace(json!({}))), &[]).expect("in mesh");
        assert_eq!(w.proxy_type, ProxyType::Sidecar);
        assert_eq!(w.name.as_deref(), Some("web-7c9d8-abcde"));
        assert_eq!(w.namespace.as_deref(), Some("shop"));
        assert_eq!(w.mesh, "default");
        assert_eq!(
            workload(&p, None, &[]).map(|w| w.mesh),
            Ok("default".into())
        );
    }

    #[test]
    fn pod_without_labels_in_a_plain_namespace_is_not_injected() {
        let p = pod(json!({"app": "web"}));
        assert_eq!(
            workload(&p, Some(&namespace(json!({}))), &[]),
            Err(NotInMesh::NotInjected)
        );
        assert_eq!(workload(&p, None, &[]), Err(NotInMesh::NotInjected));
    }

    #[test]
    fn pod_in_an_injected_namespace_joins_unless_it_opts_out() {
        let ns = injected_ns();
        assert!(workload(&pod(json!({"app": "web"})), Some(&ns), &[]).is_ok());
        let out = pod(json!({"app": "web", SIDECAR_INJECTION: "disabled"}));
        assert_eq!(workload(&out, Some(&ns), &[]), Err(NotInMesh::NotInjected));
    }

    #[test]
    fn namespace_disabling_injection_keeps_its_pods_out_unless_one_opts_in() {
        let ns = namespace(json!({SIDECAR_INJECTION: "disabled"}));
        assert_eq!(
            workload(&pod(json!({})), Some(&ns), &[]),
            Err(NotInMesh::NotInjected)
        );
        assert!(workload(&pod(json!({SIDECAR_INJECTION: "enabled"})), Some(&ns), &[]).is_ok());
    }

    #[test]
    fn injection_values_are_kumas_booleans_compared_case_sensitively() {
        for on in ["enabled", "true", "yes"] {
            assert!(
                workload(&pod(json!({SIDECAR_INJECTION: on})), None, &[]).is_ok(),
                "{on}"
            );
        }
        for off in ["disabled", "false", "no"] {
            let p = pod(json!({SIDECAR_INJECTION: off}));
            assert_eq!(
                workload(&p, Some(&injected_ns()), &[]),
                Err(NotInMesh::NotInjected),
                "{off}"
            );
        }
        let odd = pod(json!({SIDECAR_INJECTION: "Enabled"}));
        assert!(matches!(
            workload(&odd, Some(&injected_ns()), &[]),
            Err(NotInMesh::InvalidValue {
                object: "pod label",
                ..
            })
        ));
        let odd_ns = namespace(json!({SIDECAR_INJECTION: "on"}));
        assert!(matches!(
            workload(&pod(json!({})), Some(&odd_ns), &[]),
            Err(NotInMesh::InvalidValue {
                object: "namespace label",
                ..
            })
        ));
    }

    #[test]
    fn injection_annotation_is_ignored_as_in_kuma_since_2_2() {
        let opt_in = with(pod(json!({})), |p| {
            p.metadata.annotations = Some(map(&[(SIDECAR_INJECTION, "enabled")]));
        });
        assert_eq!(workload(&opt_in, None, &[]), Err(NotInMesh::NotInjected));
        let opt_out = with(pod(json!({})), |p| {
            p.metadata.annotations = Some(map(&[(SIDECAR_INJECTION, "disabled")]));
        });
        assert!(workload(&opt_out, Some(&injected_ns()), &[]).is_ok());
    }

    #[test]
    fn pod_kuma_injected_is_in_the_mesh_whatever_its_labels() {
        let p = with(pod(json!({})), |p| {
            p.metadata.annotations = Some(map(&[(SIDECAR_INJECTED, "true")]));
        });
        assert!(workload(&p, None, &[]).is_ok());
    }

    #[test]
    fn injection_exception_labels_keep_openshift_build_pods_out() {
        let p = pod(json!({"openshift.io/build.name": "b-1"}));
        assert_eq!(
            workload(&p, Some(&injected_ns()), &[]),
            Err(NotInMesh::NotInjected)
        );
    }

    #[test]
    fn host_network_pod_is_never_a_workload() {
        let p = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
            p.spec.as_mut().expect("spec").host_network = Some(true);
        });
        assert_eq!(workload(&p, None, &[]), Err(NotInMesh::HostNetwork));
    }

    #[test]
    fn kube_system_pod_is_never_a_workload() {
        let p = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
            p.metadata.namespace = Some(SYSTEM_NAMESPACE.into());
        });
        assert_eq!(workload(&p, None, &[]), Err(NotInMesh::SystemNamespace));
    }

    #[test]
    fn finished_pod_is_not_a_workload() {
        for phase in ["Succeeded", "Failed"] {
            let p = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
                p.status.as_mut().expect("status").phase = Some(phase.into());
            });
            assert_eq!(workload(&p, None, &[]), Err(NotInMesh::Finished), "{phase}");
        }
        let pending = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
            p.status = None
        });
        assert!(workload(&pending, None, &[]).is_ok());
    }

    #[test]
    fn unscheduled_pod_is_not_a_workload() {
        let p = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
            p.spec.as_mut().expect("spec").node_name = None;
        });
        assert_eq!(workload(&p, None, &[]), Err(NotInMesh::NotScheduled));
    }

    #[test]
    fn pod_without_name_or_namespace_is_refused_not_guessed() {
        let p = with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
            p.metadata.namespace = None
        });
        assert_eq!(workload(&p, None, &[]), Err(NotInMesh::Unnamed));
        assert!(inbound_tags(&p, &cx(None, &[], &no_zone())).is_empty());
    }

    #[test]
    fn mesh_is_pod_label_then_namespace_label_then_default() {
        let ns = namespace(json!({SIDECAR_INJECTION: "enabled", MESH_LABEL: "ns-mesh"}));
        let mesh = |p: &Pod, ns: &Namespace| workload(p, Some(ns), &[]).map(|w| w.mesh);
        assert_eq!(
            mesh(&pod(json!({MESH_LABEL: "pod-mesh"})), &ns),
            Ok("pod-mesh".into())
        );
        assert_eq!(mesh(&pod(json!({})), &ns), Ok("ns-mesh".into()));
        assert_eq!(
            mesh(&pod(json!({MESH_LABEL: ""})), &ns),
            Ok("ns-mesh".into())
        );
        assert_eq!(mesh(&pod(json!({})), &injected_ns()), Ok("default".into()));
        // Kuma v2.14 still honours the deprecated annotation, after the pod's label.
        let annotated = with(pod(json!({})), |p| {
            p.metadata.annotations = Some(map(&[(MESH_LABEL, "old")]))
        });
        assert_eq!(mesh(&annotated, &ns), Ok("old".into()));
    }

    #[test]
    fn tags_come_from_the_first_service_by_name_and_its_first_port() {
        let p = pod(json!({"app": "web", "version": "v2", SIDECAR_INJECTION: "enabled"}));
        let services = [
            service(
                "web",
                json!({"app": "web"}),
                json!([{"port": 80, "targetPort": 8080}, {"port": 9090}]),
            ),
            service(
                "api",
                json!({"app": "web", "version": "v2"}),
                json!([{"port": 8000, "targetPort": "http"}]),
            ),
        ];
        let settings = no_zone();
        let inbounds = inbound_tags(&p, &cx(None, &services, &settings));
        let services_of: Vec<_> = inbounds.iter().map(|t| t[SERVICE_TAG].as_str()).collect();
        assert_eq!(
            services_of,
            ["api_shop_svc_8000", "web_shop_svc_80", "web_shop_svc_9090"]
        );

        let w = workload(&p, None, &services).expect("in mesh");
        let expected = map(&[
            ("app", "web"),
            ("version", "v2"),
            (SERVICE_TAG, "api_shop_svc_8000"),
            (NAMESPACE_TAG, "shop"),
            (SERVICE_NAME_TAG, "api"),
            (SERVICE_PORT_TAG, "8000"),
            (PROTOCOL_TAG, "tcp"),
        ]);
        assert_eq!(w.tags, expected, "kuma.io/ labels are not tags");
        assert_eq!(inbounds[0], expected);
    }

    #[test]
    fn service_whose_selector_does_not_match_adds_no_inbound() {
        let p = pod(json!({"app": "web", SIDECAR_INJECTION: "enabled"}));
        let services = [
            service("db", json!({"app": "db"}), json!([{"port": 5432}])),
            service(
                "web",
                json!({"app": "web", "tier": "front"}),
                json!([{"port": 80}]),
            ),
        ];
        let w = workload(&p, None, &services).expect("in mesh");
        assert_eq!(
            w.tags.get(SERVICE_TAG).map(String::as_str),
            Some("web-7c9d8-abcde_shop_svc")
        );
        assert!(!w.tags.contains_key(SERVICE_NAME_TAG));
    }

    #[test]
    fn service_without_selector_selects_nothing() {
        let p = pod(json!({"app": "web", SIDECAR_INJECTION: "enabled"}));
        let none: Service = from(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}]}
        }));
        let empty = service("empty", json!({}), json!([{"port": 80}]));
        let settings = no_zone();
        let inbounds = inbound_tags(&p, &cx(None, &[none, empty], &settings));
        assert_eq!(inbounds.len(), 1);
        assert_eq!(inbounds[0][SERVICE_TAG], "web-7c9d8-abcde_shop_svc");
    }

    #[test]
    fn services_kuma_skips_add_no_inbound() {
        let p = pod(json!({"app": "web"}));
        let mut ignored = service("a-ignored", json!({"app": "web"}), json!([{"port": 80}]));
        ignored.metadata.annotations = Some(map(&[(IGNORE_ANNOTATION, "true")]));
        let mut external = service("b-external", json!({"app": "web"}), json!([{"port": 80}]));
        external.spec.as_mut().expect("spec").type_ = Some("ExternalName".into());
        let mut other_ns = service("c-other", json!({"app": "web"}), json!([{"port": 80}]));
        other_ns.metadata.namespace = Some("elsewhere".into());
        let ports = service(
            "d-ports",
            json!({"app": "web"}),
            json!([
                {"port": 53, "protocol": "UDP"},
                {"port": 81, "targetPort": "missing"},
                {"port": 82, "targetPort": "http"}
            ]),
        );
        let services = [ignored, external, other_ns, ports];
        let settings = no_zone();
        let inbounds = inbound_tags(&p, &cx(None, &services, &settings));
        let services_of: Vec<_> = inbounds.iter().map(|t| t[SERVICE_TAG].as_str()).collect();
        assert_eq!(services_of, ["d-ports_shop_svc_82"]);
    }

    #[test]
    fn protocol_tag_follows_app_protocol_then_annotation_then_tcp() {
        let p = pod(json!({"app": "web"}));
        let mut svc = service(
            "web",
            json!({"app": "web"}),
            json!([
                {"port": 80, "appProtocol": "HTTP"},
                {"port": 81, "appProtocol": "kubernetes.io/h2c"},
                {"port": 82}
            ]),
        );
        svc.metadata.annotations = Some(map(&[("81.service.kuma.io/protocol", "grpc")]));
        let settings = no_zone();
        let protocols: Vec<_> = inbound_tags(&p, &cx(None, &[svc], &settings))
            .into_iter()
            .map(|t| t[PROTOCOL_TAG].clone())
            .collect();
        assert_eq!(protocols, ["http", "grpc", "tcp"]);
    }

    #[test]
    fn headless_service_adds_the_instance_tag() {
        let p = pod(json!({"app": "web"}));
        let mut svc = service("web", json!({"app": "web"}), json!([{"port": 80}]));
        svc.spec.as_mut().expect("spec").cluster_ip = Some("None".into());
        let settings = no_zone();
        let inbounds = inbound_tags(&p, &cx(None, &[svc], &settings));
        assert_eq!(inbounds[0][INSTANCE_TAG], "web-7c9d8-abcde");
    }

    #[test]
    fn serviceless_pod_is_named_after_its_deployment() {
        let p = with(
            pod(json!({"app": "web", "pod-template-hash": "7c9d8", "blank": ""})),
            |p| {
                p.metadata.owner_references = Some(vec![from(json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9d8", "uid": "u"
                }))]);
            },
        );
        let settings = no_zone();
        let inbounds = inbound_tags(&p, &cx(None, &[], &settings));
        assert_eq!(
            inbounds,
            [map(&[
                ("app", "web"),
                ("pod-template-hash", "7c9d8"),
                (NAMESPACE_TAG, "shop"),
                (SERVICE_TAG, "web_shop_svc"),
                (PROTOCOL_TAG, "tcp"),
                (INSTANCE_TAG, "web-7c9d8-abcde"),
            ])]
        );
        let job = with(pod(json!({})), |p| {
            p.metadata.owner_references = Some(vec![from(json!({
                "apiVersion": "batch/v1", "kind": "Job", "name": "nightly-2894", "uid": "u"
            }))]);
        });
        assert_eq!(owner_name(&job), ("nightly-2894".into(), false));
        assert_eq!(
            owner_name(&pod(json!({}))),
            ("web-7c9d8-abcde".into(), false)
        );
    }

    #[test]
    fn zone_and_node_labels_are_added_as_kuma_does_by_default() {
        let p = pod(json!({"app": "web", "kubernetes.io/hostname": "from-pod"}));
        let node: Node = from(json!({"metadata": {"name": "node-1", "labels": {
            "kubernetes.io/hostname": "node-1", "topology.kubernetes.io/zone": "eu-1a", "other": "x"
        }}}));
        let settings = KumaSettings::default();
        let context = Context {
            node: Some(&node),
            ..cx(None, &[], &settings)
        };
        let tags = &inbound_tags(&p, &context)[0];
        assert_eq!(tags[ZONE_TAG], "default");
        assert_eq!(tags["kubernetes.io/hostname"], "node-1");
        assert_eq!(tags["topology.kubernetes.io/zone"], "eu-1a");
        assert!(!tags.contains_key("other"));
    }

    #[test]
    fn labels_are_the_pods_plus_those_kuma_computes() {
        let p = pod(json!({"app": "web", SIDECAR_INJECTION: "enabled"}));
        let settings = KumaSettings::default();
        let w = workload_of(&p, &cx(None, &[], &settings), Membership::Injection).expect("in mesh");
        assert_eq!(
            w.labels,
            map(&[
                ("app", "web"),
                (SIDECAR_INJECTION, "enabled"),
                (MESH_LABEL, "default"),
                ("kuma.io/origin", "zone"),
                (ZONE_TAG, "default"),
                ("kuma.io/env", "kubernetes"),
                (NAMESPACE_TAG, "shop"),
                ("kuma.io/proxy-type", "sidecar"),
                ("k8s.kuma.io/service-account", "web"),
                ("kuma.io/workload", "web"),
            ])
        );
    }

    #[test]
    fn delegated_gateway_is_a_gateway_tagged_with_its_first_inbound() {
        let p = with(
            pod(json!({"app": "gw", SIDECAR_INJECTION: "enabled"})),
            |p| {
                p.metadata.annotations = Some(map(&[(GATEWAY_ANNOTATION, "enabled")]));
            },
        );
        let services = [
            service(
                "b",
                json!({"app": "gw"}),
                json!([{"port": 80, "appProtocol": "http"}]),
            ),
            service("a", json!({"app": "gw"}), json!([{"port": 443}])),
        ];
        let w = workload(&p, None, &services).expect("in mesh");
        assert_eq!(w.proxy_type, ProxyType::Gateway);
        assert_eq!(w.tags[SERVICE_TAG], "a_shop_svc_443");
        assert_eq!(w.labels["kuma.io/proxy-type"], "gateway");
        // Kuma leaves a delegated gateway's non-tcp protocol tag out.
        let settings = no_zone();
        assert!(!inbound_tags(&p, &cx(None, &services, &settings))[1].contains_key(PROTOCOL_TAG));
    }

    #[test]
    fn builtin_gateway_and_unknown_gateway_values_are_not_workloads() {
        let gw = |v: &str| {
            with(pod(json!({SIDECAR_INJECTION: "enabled"})), |p| {
                p.metadata.annotations = Some(map(&[(GATEWAY_ANNOTATION, v)]));
            })
        };
        assert_eq!(
            workload(&gw("builtin"), None, &[]),
            Err(NotInMesh::BuiltinGateway)
        );
        assert!(matches!(
            workload(&gw("yes"), None, &[]),
            Err(NotInMesh::InvalidValue { .. })
        ));
    }

    #[test]
    fn dataplane_decides_membership_and_identity_when_kuma_manages_them() {
        let settings = no_zone();
        let context = cx(None, &[], &settings);
        let plain = pod(json!({"app": "web"}));
        let dp = DataplaneInfo {
            name: "web-dp".into(),
            namespace: "shop".into(),
            mesh: "payments".into(),
            proxy_type: ProxyType::Sidecar,
            inbound_tags: vec![
                map(&[(SERVICE_TAG, "web_shop_svc_80"), ("version", "v1")]),
                map(&[(SERVICE_TAG, "web_shop_svc_9090"), (INSTANCE_TAG, "web-1")]),
            ],
            labels: map(&[("app", "web"), (MESH_LABEL, "payments")]),
        };
        let w = workload_of(&plain, &context, Membership::Dataplane(Some(&dp)))
            .expect("has a Dataplane");
        assert_eq!(w.name.as_deref(), Some("web-dp"));
        assert_eq!(w.mesh, "payments");
        assert_eq!(w.labels, dp.labels);
        assert_eq!(
            w.tags,
            map(&[
                (SERVICE_TAG, "web_shop_svc_80"),
                ("version", "v1"),
                (INSTANCE_TAG, "web-1")
            ]),
            "union, first inbound wins"
        );

        let opted_in = pod(json!({SIDECAR_INJECTION: "enabled"}));
        assert_eq!(
            workload_of(&opted_in, &context, Membership::Dataplane(None)),
            Err(NotInMesh::NoDataplane)
        );
        let host = with(plain, |p| {
            p.spec.as_mut().expect("spec").host_network = Some(true)
        });
        assert_eq!(
            workload_of(&host, &context, Membership::Dataplane(Some(&dp))),
            Err(NotInMesh::HostNetwork)
        );
    }

    #[test]
    fn pod_uid_is_the_metadata_uid() {
        assert_eq!(
            pod_uid(&pod(json!({}))),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert_eq!(
            pod_uid(&with(pod(json!({})), |p| p.metadata.uid = None)),
            None
        );
    }
}
