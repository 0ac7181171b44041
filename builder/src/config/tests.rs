use std::fs;

use expect_test::{Expect, expect};

use super::*;

/// Writes `text` as `strait-build.toml` next to a `dist/` directory holding `hello`, and
/// loads it; shows the error or a summary of the plan.
fn check(text: &str, expected: Expect) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
    fs::write(dir.path().join("dist/hello"), b"hi").expect("write");
    fs::create_dir_all(dir.path().join("bin/arm64")).expect("mkdir");
    fs::create_dir_all(dir.path().join("bin/amd64")).expect("mkdir");
    let path = dir.path().join("strait-build.toml");
    fs::write(&path, text).expect("write");
    let shown = match load(&path, None) {
        Ok(plan) => {
            let layers: Vec<String> = plan
                .layers
                .iter()
                .map(|l| {
                    let srcs: Vec<String> = l
                        .src
                        .iter()
                        .map(|(p, s)| {
                            let rel = s.strip_prefix(dir.path()).unwrap_or(s);
                            format!("{p}={}", rel.display())
                        })
                        .collect();
                    format!(
                        "layer [{}] -> {:?} mode={:?} dir_mode={:o} owner={}:{} globs={:?}",
                        srcs.join(" "),
                        l.dest,
                        l.mode.map(|m| format!("{m:o}")),
                        l.dir_mode,
                        l.uid,
                        l.gid,
                        l.globs
                    )
                })
                .collect();
            format!(
                "base={:?}\nplatforms={:?}\ncompression={}\nimage={:?}\n{}",
                plan.base,
                plan.platforms
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>(),
                plan.compression.id(),
                plan.image,
                layers.join("\n")
            )
        }
        Err(e) => e
            .to_string()
            .replace(&dir.path().display().to_string(), "<dir>"),
    };
    expected.assert_eq(&shown);
}

#[test]
fn the_minimal_file_from_the_issue() {
    check(
        r#"base = "scratch"
entrypoint = ["/app/hello"]
env = { GREETING = "hi" }

[[layer]]
src = "dist/"
dest = "/app/"
"#,
        expect![[r#"
            base=Scratch
            platforms=["linux/amd64"]
            compression=gzip-libdeflate1-l1-c1048576
            image=ImageSettings { entrypoint: Some(["/app/hello"]), cmd: None, env: {"GREETING": "hi"}, workdir: None, user: None, ports: {}, labels: {} }
            layer [linux/amd64=dist] -> "app/" mode=None dir_mode=755 owner=0:0 globs=[]"#]],
    );
}

#[test]
fn richer_keys() {
    check(
        r#"base = "127.0.0.1:5000/base/alpine:3"
platforms = ["linux/amd64", "linux/arm64/v8"]
cmd = ["serve"]
workdir = "/app"
user = "1000:1000"
ports = [8080, "53/udp"]
labels = { "org.opencontainers.image.title" = "hello" }
compression = "zstd"
compression_level = 9

[[layer]]
src = "bin/{arch}"
dest = "/usr/local/bin/"
mode = 0o700
dir_mode = "0750"
owner = "1000:1000"
include = ["*.so", "lib/**"]
exclude = ["*.pyc"]
"#,
        expect![[r#"
            base=Image(Reference { registry: "127.0.0.1:5000", repository: "base/alpine", tag: Some("3"), digest: None })
            platforms=["linux/amd64", "linux/arm64/v8"]
            compression=zstd1.5-l9-c1048576
            image=ImageSettings { entrypoint: None, cmd: Some(["serve"]), env: {}, workdir: Some("/app"), user: Some("1000:1000"), ports: {"53/udp", "8080/tcp"}, labels: {"org.opencontainers.image.title": "hello"} }
            layer [linux/amd64=bin/amd64 linux/arm64/v8=bin/arm64] -> "usr/local/bin/" mode=Some("700") dir_mode=750 owner=1000:1000 globs=["+*.so", "+lib/**", "-*.pyc"]"#]],
    );
}

#[test]
fn templates() {
    check(
        r#"template = "static-binary"
binary = "dist/hello"
env = { RUST_LOG = "info" }
"#,
        expect![[r#"
            base=Scratch
            platforms=["linux/amd64"]
            compression=gzip-libdeflate1-l1-c1048576
            image=ImageSettings { entrypoint: Some(["/app/hello"]), cmd: None, env: {"RUST_LOG": "info"}, workdir: None, user: Some("65534:65534"), ports: {}, labels: {} }
            layer [linux/amd64=dist/hello] -> "app/hello" mode=Some("755") dir_mode=755 owner=0:0 globs=[]"#]],
    );
    check(
        r#"template = "scripts"
base = "127.0.0.1:5000/python:3"
scripts = "dist/"
interpreter = "python3"
main = "hello"
"#,
        expect![[r#"
            base=Image(Reference { registry: "127.0.0.1:5000", repository: "python", tag: Some("3"), digest: None })
            platforms=["linux/amd64"]
            compression=gzip-libdeflate1-l1-c1048576
            image=ImageSettings { entrypoint: Some(["python3", "/app/hello"]), cmd: None, env: {}, workdir: Some("/app"), user: None, ports: {}, labels: {} }
            layer [linux/amd64=dist] -> "app/" mode=None dir_mode=755 owner=0:0 globs=[]"#]],
    );
}

#[test]
fn errors_name_file_line_column_and_key() {
    let cases: Vec<(&str, Expect)> = vec![
        (
            "base = \"scratch\"\nentrypint = [\"/x\"]\n",
            expect![
                "<dir>/strait-build.toml:2:1: key `entrypint`: unknown field `entrypint`, expected one of `base`, `template`, `binary`, `scripts`, `interpreter`, `main`, `entrypoint`, `cmd`, `env`, `workdir`, `user`, `ports`, `labels`, `platforms`, `compression`, `compression_level`, `layer` (remove it or check its spelling)"
            ],
        ),
        (
            "[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\nmdoe = 1\n",
            expect![
                "<dir>/strait-build.toml:4:1: key `layer[0].mdoe`: unknown field `mdoe`, expected one of `src`, `dest`, `mode`, `dir_mode`, `owner`, `include`, `exclude`, `delete`, `xattrs` (remove it or check its spelling)"
            ],
        ),
        (
            "[[layer]]\nsrc = \"missing/\"\ndest = \"/app/\"\n",
            expect![[
                r#"<dir>/strait-build.toml:2:7: key `layer[0].src`: `missing/` does not exist (looked for <dir>/missing/)"#
            ]],
        ),
        (
            "[[layer]]\nsrc = \"dist\"\ndest = \"app\"\n",
            expect![[
                r#"<dir>/strait-build.toml:3:8: key `layer[0].dest`: `app` is not an absolute path in the image (it must start with `/` and have no `..`)"#
            ]],
        ),
        (
            "base = \"Bad/Ref\"\n[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:8: key `base`: invalid image reference `Bad/Ref`: repository path components are lowercase letters and digits, separated by `.`, `_`, `__` or `-`"#
            ]],
        ),
        (
            "ports = [70000]\n[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\n",
            expect![
                "<dir>/strait-build.toml:1:10: key `ports[0]`: `70000` is not a port: use 1-65535, optionally with /tcp, /udp or /sctp"
            ],
        ),
        (
            "[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\nowner = \"root\"\n",
            expect![[
                r#"<dir>/strait-build.toml:4:9: key `layer[0].owner`: `root` is not `uid:gid` (numbers, e.g. "1000:1000")"#
            ]],
        ),
        (
            "[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\nmode = \"9\"\n",
            expect![[
                r#"<dir>/strait-build.toml:4:8: key `layer[0].mode`: `9` is not an octal mode such as "0755""#
            ]],
        ),
        (
            "template = \"static-binary\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:12: key `binary`: template `static-binary` needs `binary`"#
            ]],
        ),
        (
            "binary = \"dist/hello\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:10: key `binary`: `binary` belongs to `template = "static-binary"`"#
            ]],
        ),
        (
            "platforms = [\"linux\"]\n[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:14: key `platforms[0]`: `linux` is not a platform: use os/arch[/variant], e.g. "linux/arm64""#
            ]],
        ),
        (
            "platforms = []\n[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:13: key `platforms`: list at least one platform, e.g. "linux/amd64""#
            ]],
        ),
        (
            "compression = \"brotli\"\n[[layer]]\nsrc = \"dist\"\ndest = \"/app\"\n",
            expect![[
                r#"<dir>/strait-build.toml:1:15: key `compression`: `brotli` is not a compression: use "gzip" or "zstd""#
            ]],
        ),
        (
            "base = \"scratch\"\n",
            expect![[
                r#"<dir>/strait-build.toml: key `layer`: an image on `scratch` needs at least one [[layer]] (or a template)"#
            ]],
        ),
    ];
    for (text, expected) in cases {
        check(text, expected);
    }
}

#[test]
fn globs_without_a_slash_match_at_any_depth() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("src")).expect("mkdir");
    let path = dir.path().join("strait-build.toml");
    fs::write(
        &path,
        "[[layer]]\nsrc = \"src\"\ndest = \"/app\"\ninclude = [\"lib/*.py\", \"*.sh\"]\nexclude = [\"*.pyc\", \"lib/**/test_*\"]\n",
    )
    .expect("write");
    let plan = load(&path, None).expect("load");
    let layer = &plan.layers[0];
    let include = layer.include.as_ref().expect("include");
    let exclude = layer.exclude.as_ref().expect("exclude");
    assert!(include.is_match("lib/a.py"));
    assert!(!include.is_match("lib/sub/a.py"), "`*` does not cross `/`");
    assert!(!include.is_match("other/lib/a.py"));
    assert!(include.is_match("run.sh") && include.is_match("bin/deep/run.sh"));
    assert!(exclude.is_match("x.pyc") && exclude.is_match("a/b/x.pyc"));
    assert!(exclude.is_match("lib/x/y/test_a.py"));
}
