use std::net::SocketAddr;
use std::time::Duration;

use expect_test::{Expect, expect};
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Doc {
    #[serde(default)]
    store: Store,
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Store {
    url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Listener {
    addr: SocketAddr,
}

fn check(text: &str, expected: Expect) {
    let result = parse::<Doc>(Source::Builtin("test"), text);
    let actual = match result {
        Ok(doc) => format!("ok: {doc:?}"),
        Err(error) => error.to_string(),
    };
    expected.assert_eq(&actual);
}

#[test]
fn valid_document_parses() {
    check(
        "[store]\nurl = \"zk://127.0.0.1:2181/strait\"\ntimeout = \"5s\"\n",
        expect![[
            r#"ok: Doc { store: Store { url: Some("zk://127.0.0.1:2181/strait"), timeout: Some(5s) }, listeners: [] }"#
        ]],
    );
}

#[test]
fn unknown_key_names_line_and_key() {
    check(
        "[store]\nurl = \"x\"\nurll = \"y\"\n",
        expect![
            "<test>:3:1: key `store.urll`: unknown field `urll`, expected `url` or `timeout` (remove it or check its spelling)"
        ],
    );
}

#[test]
fn bad_value_names_line_and_key() {
    check(
        "[store]\ntimeout = \"five seconds\"\n",
        expect![[
            r#"<test>:2:11: key `store.timeout`: invalid value: string "five seconds", expected a duration"#
        ]],
    );
}

#[test]
fn bad_value_in_array_of_tables() {
    check(
        "[[listeners]]\naddr = \"127.0.0.1:80\"\n[[listeners]]\naddr = \"nope\"\n",
        expect![[r#"<test>:4:8: key `listeners[1].addr`: invalid socket address syntax"#]],
    );
}

#[test]
fn syntax_error_has_position() {
    check(
        "[store\nurl = 1\n",
        expect!["<test>:1:7: unclosed table, expected `]`"],
    );
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("a\nbé c", 5), (2, 3));
    assert_eq!(line_column("", 0), (1, 1));
    assert_eq!(line_column("abc", 99), (1, 4));
}
