//! The CLI: `config check`, `route apply|ls|rm`, `svc register|deregister|ls`.

use expect_test::expect;

use crate::harness::{Strait, cli};

#[test]
fn config_check_names_file_line_column_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[store]\nurl = \"zk://127.0.0.1:2181/strait\"\n").expect("write");
    let (ok, stdout, _) = cli(&["config", "check", good.to_str().expect("utf8")]);
    assert!(ok);
    assert!(stdout.ends_with("good.toml: ok\n"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[store]\nurl = \"embedded\"\n\n[admin]\naddres = \"127.0.0.1:1\"\n",
    )
    .expect("write");
    let (ok, _, stderr) = cli(&["config", "check", bad.to_str().expect("utf8")]);
    assert!(!ok);
    let stderr = stderr.replace(&dir.path().display().to_string(), "DIR");
    expect![[r#"
        error: DIR/bad.toml:5:1: key `admin.addres`: unknown field `addres`, expected `addr` or `token` (remove it or check its spelling)
    "#]].assert_eq(&stderr);

    let (ok, _, stderr) = cli(&["config", "check", "/nonexistent/strait.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("/nonexistent/strait.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn demo_config_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, demo, _) = cli(&["config", "demo"]);
    assert!(ok);
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, demo).expect("write");
    let (ok, _, stderr) = cli(&["config", "check", path.to_str().expect("utf8")]);
    assert!(ok, "{stderr}");
}

#[test]
fn route_apply_ls_rm() {
    let strait = Strait::builder().start();
    let admin = format!("http://{}", strait.admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        r#"
[route.web]
host = "web.example.com"
service = "web"

[route.api]
host = "*.example.com"
path = { prefix = "/api" }
split = [{ service = "api", weight = 9 }, { service = "api-next", weight = 1 }]

[route.db]
kind = "tcp"
listen = "127.0.0.1:7000"
service = "db"
"#,
    )
    .expect("write");
    let (ok, stdout, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        file.to_str().expect("utf8"),
        "--admin",
        &admin,
    ]);
    assert!(ok, "{stderr}");
    expect![[r#"
        applied route api
        applied route db
        applied route web
    "#]]
    .assert_eq(&stdout);
    let (ok, stdout, _) = cli(&["route", "ls", "--admin", &admin]);
    assert!(ok);
    expect![[r#"
        NAME                     KIND  MATCH                                    TARGET
        api                      http  *.example.com {"prefix":"/api"}          api=9,api-next=1
        db                       tcp   listen 127.0.0.1:7000                    db
        web                      http  web.example.com                          web
    "#]]
    .assert_eq(&stdout);

    // A file with one bad route applies nothing and says where.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[route.ok]\nhost = \"ok.example.com\"\nservice = \"ok\"\n\n[route.bad]\nhost = \"bad.example.com\"\nservce = \"x\"\n").expect("write");
    let (ok, _, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        bad.to_str().expect("utf8"),
        "--admin",
        &admin,
    ]);
    assert!(!ok);
    let stderr = stderr.replace(&dir.path().display().to_string(), "DIR");
    expect![[r#"
        error: DIR/bad.toml:7:1: key `route.bad.servce`: unknown field `servce`, expected one of `kind`, `host`, `path`, `methods`, `headers`, `listen`, `sni`, `service`, `split`, `timeouts`, `retry`, `prefix_rewrite`, `request_headers`, `response_headers` (remove it or check its spelling)
    "#]].assert_eq(&stderr);
    assert!(
        strait.get("/v1/routes/ok").0 == 404,
        "nothing applied from a bad file"
    );

    // A file that moves TCP routes: `a-db` takes the port `db` leaves. Written in name
    // order, `a-db` first meets the old `db` (409) and is applied after it.
    let moves = dir.path().join("moves.toml");
    std::fs::write(
        &moves,
        "[route.a-db]\nkind = \"tcp\"\nlisten = \"127.0.0.1:7000\"\nservice = \"db2\"\n\n\
         [route.db]\nkind = \"tcp\"\nlisten = \"127.0.0.1:7001\"\nservice = \"db\"\n",
    )
    .expect("write");
    let (ok, stdout, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        moves.to_str().expect("utf8"),
        "--admin",
        &admin,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "applied route db\napplied route a-db\n");
    // One that takes a stored route's connections applies nothing.
    let taken = dir.path().join("taken.toml");
    std::fs::write(
        &taken,
        "[route.new-web]\nhost = \"new.example.com\"\nservice = \"web\"\n\n\
         [route.z-db]\nkind = \"tcp\"\nlisten = \"0.0.0.0:7001\"\nservice = \"db\"\n",
    )
    .expect("write");
    let (ok, _, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        taken.to_str().expect("utf8"),
        "--admin",
        &admin,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("route `z-db` would take the connections of the stored route `db`"),
        "{stderr}"
    );
    assert_eq!(strait.get("/v1/routes/new-web").0, 404, "nothing applied");
    // Two that trade ports cannot be ordered: refused before any write.
    let swap = dir.path().join("swap.toml");
    std::fs::write(
        &swap,
        "[route.a-db]\nkind = \"tcp\"\nlisten = \"127.0.0.1:7001\"\nservice = \"db2\"\n\n\
         [route.db]\nkind = \"tcp\"\nlisten = \"127.0.0.1:7000\"\nservice = \"db\"\n\n\
         [route.b-web]\nhost = \"b.example.com\"\nservice = \"web\"\n",
    )
    .expect("write");
    let (ok, _, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        swap.to_str().expect("utf8"),
        "--admin",
        &admin,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("trade connections with each other; apply them in two steps"),
        "{stderr}"
    );
    assert_eq!(strait.get("/v1/routes/b-web").0, 404, "nothing applied");
    for name in ["a-db", "db"] {
        assert_eq!(strait.delete(&format!("/v1/routes/{name}")).0, 204);
    }

    // A backup (what `GET /v1/routes` answers) applies as it is, into another strait;
    // so does the TOML file's shape written as JSON.
    let backup = dir.path().join("backup.json");
    std::fs::write(&backup, strait.get("/v1/routes").1.to_string()).expect("write");
    let other = Strait::builder().start();
    let other_admin = format!("http://{}", other.admin);
    let (ok, stdout, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        backup.to_str().expect("utf8"),
        "--admin",
        &other_admin,
    ]);
    assert!(ok, "{stderr}");
    let stored = strait.get("/v1/routes").1["routes"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(stdout.lines().count(), stored, "{stdout}");
    assert_eq!(
        other.get("/v1/routes").1["routes"],
        strait.get("/v1/routes").1["routes"]
    );
    let shaped = dir.path().join("shaped.json");
    std::fs::write(
        &shaped,
        r#"{"route":{"extra":{"host":"extra.example.com","service":"extra"}}}"#,
    )
    .expect("write");
    let (ok, stdout, stderr) = cli(&[
        "route",
        "apply",
        "-f",
        shaped.to_str().expect("utf8"),
        "--admin",
        &other_admin,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "applied route extra\n");

    let (ok, _, _) = cli(&["route", "rm", "api", "--admin", &admin]);
    assert!(ok);
    let (ok, _, stderr) = cli(&["route", "rm", "api", "--admin", &admin]);
    assert!(!ok);
    assert!(
        stderr.contains("route `api` not found (HTTP 404)"),
        "{stderr}"
    );
}

#[test]
fn svc_register_ls_deregister() {
    let strait = Strait::builder().start();
    let admin = format!("http://{}", strait.admin);
    let (ok, _, stderr) = cli(&[
        "svc",
        "register",
        "web",
        "web-1",
        "127.0.0.1:9000",
        "--zone",
        "eu-1",
        "--tag",
        "v2",
        "--port",
        "grpc=9090",
        "--meta",
        "build=7",
        "--admin",
        &admin,
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(&[
        "svc",
        "register",
        "web",
        "web-2",
        "[::1]:9001",
        "--health",
        "critical",
        "--admin",
        &admin,
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = cli(&["svc", "ls", "--admin", &admin]);
    assert!(ok);
    expect![[r#"
        SERVICE                          INSTANCES  PASSING
        web                                      2        1
    "#]]
    .assert_eq(&stdout);
    let (ok, stdout, _) = cli(&["svc", "ls", "web", "--admin", &admin]);
    assert!(ok);
    expect![[r#"
        ID                       ADDRESS                                   PORT ZONE         HEALTH      TAGS
        web-1                    127.0.0.1                                 9000 eu-1         passing     v2
        web-2                    ::1                                       9001 -            critical    
    "#]].assert_eq(&stdout);
    let (_, instance) = strait.get("/v1/services/web/instances/web-1");
    assert_eq!(instance["ports"]["grpc"], 9090);
    assert_eq!(instance["metadata"]["build"], "7");

    let (ok, _, stderr) = cli(&[
        "svc",
        "register",
        "Web",
        "x",
        "127.0.0.1:1",
        "--admin",
        &admin,
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("service: `Web` may contain only lowercase"),
        "{stderr}"
    );
    let (ok, _, _) = cli(&["svc", "deregister", "web", "web-2", "--admin", &admin]);
    assert!(ok);
    assert_eq!(strait.instance_ids("web"), ["web-1"]);

    let (ok, _, stderr) = cli(&["svc", "ls", "--admin", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot reach the strait admin API at http://127.0.0.1:1"),
        "{stderr}"
    );
}
