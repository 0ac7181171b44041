//! Docs that must not go stale.

/// docs/ARCHITECTURE.md's code map names every workspace member.
#[test]
fn architecture_names_every_workspace_member() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    let architecture =
        std::fs::read_to_string(format!("{root}/docs/ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let members: toml::Table = toml::from_str(&manifest).expect("parse Cargo.toml");
    let members = members["workspace"]["members"].as_array().expect("members");
    for member in members
        .iter()
        .filter_map(|m| m.as_str())
        .filter(|m| *m != ".")
    {
        assert!(
            architecture.contains(&format!("`{member}/`")),
            "docs/ARCHITECTURE.md does not describe workspace member `{member}/`"
        );
    }
}

/// The README starts with the two set-up commands, and CI runs the test one.
#[test]
fn readme_commands_match_ci() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).expect(".ci/run");
    assert!(
        readme.contains("cargo run --release -- up"),
        "README lost the run command"
    );
    assert!(
        readme.contains("scripts/test"),
        "README lost the test command"
    );
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/test"),
        ".ci/run must run scripts/test"
    );
}
