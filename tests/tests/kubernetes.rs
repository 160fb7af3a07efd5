//! Kubernetes (issue 6): the API server stand-in, driven by the real kube-rs client.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    runtime::{WatchStreamExt as _, watcher},
};
use passthrough_tests::{
    Topology,
    apiserver::{ApiServer, Resource},
    run_in_netns,
};

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kuma.io/sidecar-injection": "enabled"}},
    }))
    .expect("namespace")
}

/// Names in the watcher's view after each event, until `until` holds or time runs out.
#[test]
fn the_stand_in_serves_kube_rs_lists_watches_relists_and_deletions() {
    let topo = Topology::new();
    let api = ApiServer::start(&topo.client_netns_path());
    api.apply(Resource::Namespaces, namespace("a"));
    let url = api.url();
    run_in_netns(topo.client_netns_path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let config = Config::new(url.parse().expect("url"));
            let client = Client::try_from(config).expect("client");
            let nss: Api<Namespace> = Api::all(client);
            let (reader, writer) = kube::runtime::reflector::store();
            let stream = kube::runtime::reflector(
                writer,
                watcher(nss, watcher::Config::default()).default_backoff(),
            )
            .applied_objects();
            let mut stream = Box::pin(stream);
            let names = |r: &kube::runtime::reflector::Store<Namespace>| {
                let mut n: Vec<String> = r
                    .state()
                    .iter()
                    .filter_map(|o| o.metadata.name.clone())
                    .collect();
                n.sort();
                n
            };
            let step = |want: Vec<&'static str>| {
                let reader = reader.clone();
                let names = &names;
                async move {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    loop {
                        if names(&reader) == want {
                            return;
                        }
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "store {:?}, expected {want:?}",
                            names(&reader)
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            let driver = tokio::spawn(async move { while stream.next().await.is_some() {} });
            // The initial list.
            step(vec!["a"]).await;
            // A watch event.
            api.apply(Resource::Namespaces, namespace("b"));
            step(vec!["a", "b"]).await;
            // 410 Gone: the watcher relists and sees what changed meanwhile.
            api.expire_watches();
            api.apply(Resource::Namespaces, namespace("c"));
            step(vec!["a", "b", "c"]).await;
            // A dropped watch, then a deletion.
            api.drop_watches();
            api.delete(Resource::Namespaces, "", "b");
            step(vec!["a", "c"]).await;
            driver.abort();
        });
    });
    assert!(api.requests() >= 3, "lists and watches were made");
}
