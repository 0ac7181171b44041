use expect_test::{Expect, expect};

use super::*;

fn check_spec(json: &str, expected: Expect) {
    let actual = match serde_json::from_str::<AppSpec>(json) {
        Ok(mut spec) => match spec.validate() {
            Ok(()) => format!(
                "ok: {} x{} zones={:?} check={:?} steps={:?}",
                spec.image, spec.instances, spec.zones, spec.check, spec.rollout.steps
            ),
            Err(e) => e.to_string(),
        },
        Err(e) => format!("parse: {e}"),
    };
    expected.assert_eq(&actual);
}

#[test]
fn specs_are_validated() {
    check_spec(
        r#"{"image": "127.0.0.1:5000/shop/web:v1", "instances": 4}"#,
        expect![[r#"ok: 127.0.0.1:5000/shop/web:v1 x4 zones=[] check=Tcp steps=[10, 50, 100]"#]],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 2, "zones": ["b", "a", "a"],
            "check": {"http": {"path": "/healthz"}}, "rollout": {"steps": [50, 100]}}"#,
        expect![[
            r#"ok: r/web:v1 x2 zones=["a", "b"] check=Http { path: "/healthz" } steps=[50, 100]"#
        ]],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 0}"#,
        expect!["instances: 0 is out of range: 1 to 1000"],
    );
    check_spec(
        r#"{"image": "", "instances": 1}"#,
        expect!["image: `` is not an image reference (registry/repository:tag)"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "env": {"1BAD": "x"}}"#,
        expect!["env.1BAD: `1BAD` is not an environment variable name (letters, digits, '_')"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "env": {"PORT": "80"}}"#,
        expect!["env.PORT: is the port variable (`port_env`); the agent sets it"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "check": {"http": {"path": "healthz"}}}"#,
        expect![
            "check.http.path: `healthz` must start with '/' and have no spaces or control characters"
        ],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "rollout": {"steps": [50, 10, 100]}}"#,
        expect!["rollout.steps: [50, 10, 100]: percentages must rise from above 0 and end at 100"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "rollout": {"steps": [10, 50]}}"#,
        expect!["rollout.steps: [10, 50]: percentages must rise from above 0 and end at 100"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "host": "Web.Example.COM"}"#,
        expect![[r#"ok: r/web:v1 x1 zones=[] check=Tcp steps=[10, 50, 100]"#]],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "host": "bad host"}"#,
        expect![
            "host: `bad host` is not a host name (labels of a-z, 0-9 and '-'; a leading `*.` for any subdomain; no port)"
        ],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "zones": ["EU"]}"#,
        expect!["zones: `EU` may contain only lowercase letters a-z, digits and '-'"],
    );
    check_spec(
        r#"{"image": "r/web:v1", "instances": 1, "replicas": 3}"#,
        expect![
            "parse: unknown field `replicas`, expected one of `image`, `instances`, `zones`, `env`, `port_env`, `check`, `check_interval`, `host`, `timeout`, `rollout` at line 1 column 48"
        ],
    );
}

#[test]
fn app_names_are_dns_labels_and_not_the_agents_service() {
    assert!(validate_app_name("web").is_ok());
    assert!(validate_app_name("Web").is_err());
    assert!(validate_app_name("web.x").is_err());
    assert_eq!(
        validate_app_name(AGENT_SERVICE).map_err(|e| e.to_string()),
        Err("app: `strait-agent` is the agents' own service".into())
    );
}

#[test]
fn slots_are_numbered_across_zones_in_zone_order() {
    let spec: AppSpec =
        serde_json::from_str(r#"{"image": "r/web:v1", "instances": 1}"#).expect("spec");
    let deployment = Deployment {
        app: "web".into(),
        id: 3,
        spec,
        image: format!("r/web@sha256:{}", "a".repeat(64)),
        digest: format!("sha256:{}", "a".repeat(64)),
        placement: BTreeMap::from([("b".into(), 1), ("a".into(), 2)]),
        state: DeployState::Running,
        goal: ContainerGoal::Run,
        weight: 0,
        steps: Vec::new(),
        reason: None,
        previous: None,
        cancel: false,
        drain: None,
        route_before: None,
        controller: "test".into(),
        created: SystemTime::UNIX_EPOCH,
        updated: SystemTime::UNIX_EPOCH,
        finished: None,
    };
    let slots: Vec<(&str, u32)> = deployment.slots().collect();
    assert_eq!(slots, [("a", 0), ("a", 1), ("b", 2)]);
    assert_eq!(deployment.instance_id(2), "web-3-2");
    assert_eq!(deployment.tag(), "d3");
    assert_eq!(deployment.wanted(), 3);
    let mut bad = deployment.clone();
    bad.digest = "sha256:xyz".into();
    assert!(bad.validate().is_err());
    let mut good = deployment;
    assert!(good.validate().is_ok());
    // A record survives a JSON round trip as the store keeps it.
    let json = serde_json::to_string(&good).expect("encode");
    let back: Deployment = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, good);
}
