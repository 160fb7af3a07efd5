//! A Kubernetes API server stand-in that speaks the real protocol to the real kube-rs client:
//! lists with a `resourceVersion`, watch streams of `ADDED` / `MODIFIED` / `DELETED` /
//! `BOOKMARK` events (chunked JSON lines), `410 Gone` for a watch from a compacted version,
//! and connections it can drop. Objects are JSON as the API server serialises them (the tests
//! build them from `k8s-openapi` types).
//!
//! It listens on 127.0.0.1 of the client network namespace, where the agent runs.

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Notify, broadcast, watch},
};

use crate::run_in_netns;

/// The collections the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    Namespaces,
    Services,
    MeshPassthroughs,
    Dataplanes,
}

impl Resource {
    fn of_path(path: &str) -> Option<(Self, Option<String>)> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (resource, ns) = match parts.as_slice() {
            ["api", "v1", r] => (*r, None),
            ["api", "v1", "namespaces", ns, r] => (*r, Some(ns.to_string())),
            ["apis", "kuma.io", "v1alpha1", r] => (*r, None),
            ["apis", "kuma.io", "v1alpha1", "namespaces", ns, r] => (*r, Some(ns.to_string())),
            _ => return None,
        };
        let r = match resource {
            "pods" => Self::Pods,
            "namespaces" => Self::Namespaces,
            "services" => Self::Services,
            "meshpassthroughs" => Self::MeshPassthroughs,
            "dataplanes" => Self::Dataplanes,
            _ => return None,
        };
        Some((r, ns))
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Self::Pods => ("v1", "PodList"),
            Self::Namespaces => ("v1", "NamespaceList"),
            Self::Services => ("v1", "ServiceList"),
            Self::MeshPassthroughs => ("kuma.io/v1alpha1", "MeshPassthroughList"),
            Self::Dataplanes => ("kuma.io/v1alpha1", "DataplaneList"),
        }
    }
}

/// One change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a version below this get `410 Gone`.
    compacted: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    log: Vec<Change>,
    /// Events the agent posted (`POST .../events`).
    events: Vec<Value>,
    /// Resources that answer 404, as a CRD that is not installed does.
    missing: Vec<Resource>,
    requests: u64,
}

pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch (the API server restarting, or a load balancer
    /// dropping it); a counter, so a watch between two awaits cannot miss it.
    cut: Arc<watch::Sender<u64>>,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ApiServer {
    /// Starts serving on 127.0.0.1 of the network namespace at `netns`.
    pub fn start(netns: &Path) -> Self {
        let listener = run_in_netns(netns, || {
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the API server stand-in")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (changes, _) = broadcast::channel(4096);
        let cut = Arc::new(watch::channel(0u64).0);
        let stop = Arc::new(Notify::new());
        let thread = {
            let (state, changes, cut, stop) =
                (state.clone(), changes.clone(), cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let conn = Conn {
                                    state: state.clone(),
                                    changes: changes.clone(),
                                    cut: cut.clone(),
                                };
                                tokio::spawn(async move {
                                    let _ = conn.serve(stream).await;
                                });
                            }
                            () = stop.notified() => break,
                        }
                    }
                });
            })
        };
        Self {
            addr,
            state,
            changes,
            cut,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file pointing at the stand-in, for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\"}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`).
    pub fn apply(&self, resource: Resource, object: impl serde::Serialize) {
        let mut object = serde_json::to_value(object).expect("object JSON");
        let mut s = lock(&self.state);
        s.rv += 1;
        let rv = s.rv;
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("objects have a name")
            .to_string();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{name}-{rv}"));
        }
        let key = (resource, ns, name);
        let kind = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, object.clone());
        let change = Change {
            rv,
            resource,
            kind,
            object,
        };
        s.log.push(change.clone());
        drop(s);
        let _ = self.changes.send(change);
    }

    /// Deletes an object (`DELETED`).
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) {
        let mut s = lock(&self.state);
        let Some(mut object) =
            s.objects
                .remove(&(resource, namespace.to_string(), name.to_string()))
        else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            resource,
            kind: "DELETED",
            object,
        };
        s.log.push(change.clone());
        drop(s);
        let _ = self.changes.send(change);
    }

    /// Compacts history and ends every watch: clients must relist (`410 Gone`).
    pub fn expire_watches(&self) {
        let mut s = lock(&self.state);
        s.compacted = s.rv + 1;
        drop(s);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Ends every open watch without an error, as a dropped connection does.
    pub fn drop_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Makes a resource answer 404, as a CRD that is not installed does.
    pub fn without(&self, resource: Resource) {
        lock(&self.state).missing.push(resource);
    }

    /// The Events the agent posted.
    pub fn posted_events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.notify_one();
        self.cut.send_modify(|n| *n += 1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: Arc<watch::Sender<u64>>,
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Conn {
    async fn serve(self, stream: TcpStream) -> io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let Some(req) = read_request(&mut read).await? else {
                return Ok(());
            };
            lock(&self.state).requests += 1;
            if req
                .query
                .get("watch")
                .is_some_and(|v| v == "true" || v == "1")
            {
                return self.watch(&req, &mut write).await;
            }
            let (code, body) = self.answer(&req);
            let text = body.to_string();
            let head = format!(
                "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                if code < 300 { "OK" } else { "Error" },
                text.len()
            );
            write.write_all(head.as_bytes()).await?;
            write.write_all(text.as_bytes()).await?;
        }
    }

    fn answer(&self, req: &Request) -> (u16, Value) {
        if req.method == "POST" && req.path.ends_with("/events") {
            let event: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            lock(&self.state).events.push(event.clone());
            return (201, event);
        }
        if req.method == "PATCH" || req.method == "POST" {
            // Event series updates and the like: accepted, not recorded.
            return (200, json!({}));
        }
        let Some((resource, ns)) = Resource::of_path(&req.path) else {
            return (404, status(404, "NotFound", "no such path"));
        };
        let s = lock(&self.state);
        if s.missing.contains(&resource) {
            return (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        let (api_version, kind) = resource.list_kind();
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((r, o_ns, _), _)| *r == resource && ns.as_ref().is_none_or(|n| n == o_ns))
            .map(|(_, o)| o.clone())
            .filter(|o| selected(o, &req.query))
            .collect();
        (
            200,
            json!({
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"resourceVersion": s.rv.to_string()},
                "items": items,
            }),
        )
    }

    async fn watch(
        &self,
        req: &Request,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> io::Result<()> {
        let Some((resource, ns)) = Resource::of_path(&req.path) else {
            return Ok(());
        };
        let from: u64 = req
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut rx = self.changes.subscribe();
        let mut cut = self.cut.subscribe();
        cut.borrow_and_update();
        let (backlog, gone, current) = {
            let s = lock(&self.state);
            let backlog: Vec<Change> = s
                .log
                .iter()
                .filter(|c| c.rv > from && c.resource == resource)
                .cloned()
                .collect();
            (backlog, from != 0 && from < s.compacted, s.rv)
        };
        write
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await?;
        if gone {
            let e = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            chunk(write, &e).await?;
            return write.write_all(b"0\r\n\r\n").await;
        }
        let matches = |c: &Change| {
            c.resource == resource
                && ns
                    .as_ref()
                    .is_none_or(|n| c.object["metadata"]["namespace"].as_str() == Some(n))
                && selected(&c.object, &req.query)
        };
        for c in backlog.iter().filter(|c| matches(c)) {
            chunk(write, &json!({"type": c.kind, "object": c.object})).await?;
        }
        if req
            .query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true")
        {
            let (api_version, kind) = resource.list_kind();
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "apiVersion": api_version, "kind": kind.trim_end_matches("List"),
                "metadata": {"resourceVersion": current.to_string()}}});
            chunk(write, &bookmark).await?;
        }
        loop {
            tokio::select! {
                c = rx.recv() => match c {
                    Ok(c) if c.rv > current && matches(&c) => {
                        chunk(write, &json!({"type": c.kind, "object": c.object})).await?;
                    }
                    Ok(_) => {}
                    Err(_) => return Ok(()),
                },
                _ = cut.changed() => {
                    let gone = {
                        let s = lock(&self.state);
                        s.compacted > current
                    };
                    if gone {
                        let e = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                        chunk(write, &e).await?;
                    }
                    return write.write_all(b"0\r\n\r\n").await;
                }
            }
        }
    }
}

/// Field selector `spec.nodeName=N` and label selector `k=v` (equality only).
fn selected(object: &Value, query: &BTreeMap<String, String>) -> bool {
    if let Some(fs) = query.get("fieldSelector") {
        for term in fs.split(',').filter(|t| !t.is_empty()) {
            let Some((field, want)) = term.split_once('=') else {
                continue;
            };
            let mut v = object;
            for part in field.split('.') {
                v = &v[part];
            }
            if v.as_str().unwrap_or("") != want.trim_start_matches('=') {
                return false;
            }
        }
    }
    true
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
           "code": code, "reason": reason, "message": message, "metadata": {}})
}

async fn chunk(write: &mut tokio::net::tcp::OwnedWriteHalf, v: &Value) -> io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    write
        .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await?;
    write.flush().await
}

async fn read_request(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> io::Result<Option<Request>> {
    let mut first = String::new();
    if read.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    read.read_exact(&mut body).await?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    }))
}
