use super::*;

#[test]
fn dot_segments() {
    for path in [
        "/a/../b",
        "/..",
        "/a/./b",
        "/%2e%2E/x",
        "/.%2e",
        "/a/%2E",
        // Separators a backend may decode or normalise: %2f, backslash, %5c.
        "/public/%2e%2e%2fsecret",
        "/public/..%2Fsecret",
        "/public/x%2f..%2f..%2fsecret",
        "/public/..\\secret",
        "/public/x%5C..%5csecret",
        "/a%2f.",
        // Path parameters (Tomcat, Spring) and double encoding.
        "/public/..;/secret",
        "/public/..;x/secret",
        "/public/%252e%252e%252fsecret",
        "/public/..%252Fsecret",
    ] {
        assert!(has_dot_segment(path), "{path}");
    }
    for path in [
        "",
        "/",
        "//",
        "/a/b",
        "/...",
        "/a.b/c",
        "/.well-known/x",
        "/%2e%2e%2e",
        "/a%2fb/c",
        "/a%2f...%2fb",
        "/%",
        "/%2",
        "/x%2",
        "/100%",
        "/a;b/c",
        "/x..;/y",
        "/%25/%252",
        "/%252e%252e%252e",
    ] {
        assert!(!has_dot_segment(path), "{path}");
    }
}
