use std::sync::Arc;

use super::*;
use crate::model::{InstanceSpec, Route};

#[test]
fn store_urls() {
    assert_eq!("embedded".parse::<StoreUrl>(), Ok(StoreUrl::Embedded));
    assert_eq!(
        "zk://127.0.0.1:2181".parse::<StoreUrl>(),
        Ok(StoreUrl::ZooKeeper {
            hosts: "127.0.0.1:2181".into(),
            chroot: "/strait".into()
        })
    );
    assert_eq!(
        "zk://a:1,b:2/x/y/".parse::<StoreUrl>(),
        Ok(StoreUrl::ZooKeeper {
            hosts: "a:1,b:2".into(),
            chroot: "/x/y".into()
        })
    );
    for bad in [
        "",
        "zk://",
        "zk:///x",
        "zk://a/x",
        "zk://a:0",
        "zk://a:1/../x",
        "zk://a:1/a b",
        "etcd://a:1",
    ] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
    let url: StoreUrl = "zk://a:1,b:2/x".parse().expect("valid");
    assert_eq!(url.to_string(), "zk://a:1,b:2/x");
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(service, id, InstanceSpec::new([127, 0, 0, 1].into(), port)).expect("valid")
}

#[tokio::test]
async fn embedded_store_publishes_and_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let store = EmbeddedStore::open(dir.path(), StoreMetrics::new(&registry).expect("metrics"))
        .await
        .expect("open");
    let mut watch = store.watch();
    let first = watch.borrow_and_update().revision;

    store
        .register(instance("web", "w1", 80))
        .await
        .expect("register");
    store
        .register(instance("web", "w1", 80))
        .await
        .expect("same again");
    assert_eq!(
        store.snapshot().revision,
        first + 1,
        "an identical write is not a new revision"
    );
    assert!(watch.has_changed().expect("open channel"));

    let before = store.snapshot();
    store
        .put_route("web", Route::http("web.example.com", "web"))
        .await
        .expect("route");
    let after = store.snapshot();
    assert!(
        Arc::ptr_eq(&before.services, &after.services),
        "a route change shares the services map"
    );
    assert_eq!(after.revision, first + 2);

    store
        .set_health("web", "w1", Health::Critical)
        .await
        .expect("health");
    assert_eq!(
        store
            .snapshot()
            .instance("web", "w1")
            .map(|i| i.spec.health),
        Some(Health::Critical)
    );
    assert!(matches!(
        store.set_health("web", "nope", Health::Critical).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.deregister("web", "w1").await.expect("deregister"));
    assert!(
        !store
            .deregister("web", "w1")
            .await
            .expect("deregister again")
    );
    assert!(
        store.snapshot().services.is_empty(),
        "an empty service disappears"
    );
    drop(store);

    let store = EmbeddedStore::open(
        dir.path(),
        StoreMetrics::new(&Registry::new()).expect("metrics"),
    )
    .await
    .expect("reopen");
    assert!(store.snapshot().routes.contains_key("web"));
    assert!(store.snapshot().revision >= first + 2);
}
