//! Tidy checks on the code's structure, as rust-analyzer's tidy tests check its rules
//! inside `cargo test`: no import cycle among the modules of any workspace crate, and the
//! router's modules import only from layers below their own.
//!
//! What counts as an import: a module's code naming an item of another module of its
//! crate through a path (`crate::…`, `super::…`, `self::…`, or a path starting at one of
//! its own child modules), in a `use` or anywhere in the code. Not counted: `mod`
//! declarations; test code (`#[cfg(test)]` items and the modules they declare); a
//! module's re-exports (`pub use`) of its own descendants' items, which make it their
//! face, not their user; and the crate root's own paths (`lib.rs`, `main.rs`), which
//! assemble the crate and sit above every module of it.
//!
//! The reading is textual (comments and literals stripped, then tokens), which is enough
//! for how this workspace is written: paths, not glob-imported modules, name modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The router's layers, bottom to top, by top-level module. A module may import from its
/// own layer and the layers below; the crate root (`lib.rs`) is above them all.
const ROUTER_LAYERS: &[(&str, &[&str])] = &[
    ("wire", &["wire"]),
    ("io helpers", &["io"]),
    ("config", &["config"]),
    ("TLS", &["tls"]),
    ("pools", &["pool"]),
    ("table", &["table"]),
    (
        "metrics, head writers, explain, access log",
        &["metrics", "heads", "explain", "access_log"],
    ),
    ("request core", &["request"]),
    ("paths", &["paths"]),
    ("front door", &["front"]),
    ("service", &["service"]),
];

/// Import cycles not broken yet: (crate, the modules of one cycle). This list must shrink
/// to empty; an entry that no longer matches a cycle fails the test, so it goes as soon as
/// its cycle does.
/// Import cycles tolerated for now, by crate: none. A new one fails the test.
const ALLOWED_CYCLES: &[(&str, &[&str])] = &[];

#[test]
fn no_import_cycle_in_any_workspace_crate() {
    let mut found = BTreeSet::new();
    let mut failures = Vec::new();
    for krate in workspace_crates() {
        for cycle in cycles(&krate) {
            let names: Vec<String> = cycle.iter().map(display).collect();
            found.insert((krate.name.clone(), names.clone()));
            let allowed = ALLOWED_CYCLES.iter().any(|(name, modules)| {
                *name == krate.name && modules.iter().copied().eq(names.iter().map(String::as_str))
            });
            if !allowed {
                failures.push(format!(
                    "crate `{}`: import cycle among {}:\n{}",
                    krate.name,
                    names.join(", "),
                    describe_edges(&krate, &cycle)
                ));
            }
        }
    }
    for (name, modules) in ALLOWED_CYCLES {
        let modules: Vec<String> = modules.iter().map(|m| m.to_string()).collect();
        if !found.contains(&(name.to_string(), modules.clone())) {
            failures.push(format!(
                "ALLOWED_CYCLES lists crate `{name}`: {} but there is no such cycle any more: \
                 remove the entry",
                modules.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn router_modules_import_only_from_layers_below() {
    let router = workspace_crates()
        .into_iter()
        .find(|c| c.name == "router")
        .expect("the router crate");
    let layer_of = |module: &ModPath| -> Option<usize> {
        let top = module.first()?;
        ROUTER_LAYERS
            .iter()
            .position(|(_, modules)| modules.contains(&top.as_str()))
    };
    let mut failures = Vec::new();
    for module in router.modules.keys() {
        if !module.is_empty() && layer_of(module).is_none() {
            failures.push(format!(
                "router module `{}` is in no layer: add it to ROUTER_LAYERS (tests/it/tidy.rs) \
                 and to docs/ARCHITECTURE.md",
                display(module)
            ));
        }
    }
    for (from, edges) in &router.edges {
        let Some(from_layer) = layer_of(from) else {
            continue; // the crate root, or reported above
        };
        for (to, names) in edges {
            let to_layer = layer_of(to).unwrap_or(usize::MAX); // the crate root is above all
            if to_layer > from_layer {
                let to_name = match to_layer {
                    usize::MAX => "the crate root".to_string(),
                    n => ROUTER_LAYERS[n].0.to_string(),
                };
                failures.push(format!(
                    "router: `{}` ({}) imports `{}` ({}), a layer above it: {}",
                    display(from),
                    ROUTER_LAYERS[from_layer].0,
                    display(to),
                    to_name,
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    // The reading itself works: these imports are there.
    for (from, to) in [("paths::pump", "request"), ("table::tcp", "table::route")] {
        assert!(
            router
                .edges
                .get(&split(from))
                .is_some_and(|e| e.contains_key(&split(to))),
            "the tidy reader no longer sees `{from}` importing `{to}`"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A module's path inside its crate; empty for the crate root.
type ModPath = Vec<String>;

struct Crate {
    name: String,
    /// Every non-test module, and the file it is in.
    modules: BTreeMap<ModPath, PathBuf>,
    /// from -> to -> the paths that make the import.
    edges: BTreeMap<ModPath, BTreeMap<ModPath, BTreeSet<String>>>,
}

fn display(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

fn split(module: &str) -> ModPath {
    module.split("::").map(str::to_string).collect()
}

fn workspace_crates() -> Vec<Crate> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let manifest: toml::Table = toml::from_str(&manifest).expect("parse Cargo.toml");
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members");
    let mut crates = Vec::new();
    for member in members.iter().filter_map(|m| m.as_str()) {
        let dir = root.join(member);
        let package = std::fs::read_to_string(dir.join("Cargo.toml")).expect("member manifest");
        let package: toml::Table = toml::from_str(&package).expect("parse member manifest");
        let name = package["package"]["name"]
            .as_str()
            .expect("package name")
            .to_string();
        for root_file in ["src/lib.rs", "src/main.rs"] {
            let file = dir.join(root_file);
            if file.exists() {
                crates.push(read_crate(&name, &file));
            }
        }
    }
    assert!(
        crates.len() >= 7,
        "found only {} workspace crates",
        crates.len()
    );
    crates
}

/// One file's reading: child modules declared, and the paths it names.
struct FileItems {
    children: Vec<String>,
    /// (path as written, whether it is re-exported by a `pub use`)
    paths: Vec<(Vec<String>, bool)>,
}

fn read_crate(name: &str, root: &Path) -> Crate {
    let mut modules = BTreeMap::new();
    let mut items = BTreeMap::new();
    let mut queue = vec![(ModPath::new(), root.to_path_buf())];
    while let Some((module, file)) = queue.pop() {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let read = read_file(&text);
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let dir = file.parent().expect("a file's directory");
        // `lib.rs`, `main.rs` and `mod.rs` own their directory; `x.rs` owns `x/`.
        let child_dir = if module.is_empty() || stem == "mod" {
            dir.to_path_buf()
        } else {
            dir.join(stem)
        };
        for child in &read.children {
            let flat = child_dir.join(format!("{child}.rs"));
            let nested = child_dir.join(child).join("mod.rs");
            let path = if flat.exists() { flat } else { nested };
            assert!(
                path.exists(),
                "{}: `mod {child};` has no file",
                file.display()
            );
            let mut child_module = module.clone();
            child_module.push(child.clone());
            queue.push((child_module, path));
        }
        modules.insert(module.clone(), file);
        items.insert(module, read);
    }
    let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, BTreeSet<String>>> = BTreeMap::new();
    for (module, read) in &items {
        if module.is_empty() {
            continue; // the crate root assembles the crate
        }
        for (path, reexport) in &read.paths {
            let Some(absolute) = resolve(module, &read.children, path) else {
                continue;
            };
            let target = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| modules.contains_key(prefix))
                .unwrap_or_default();
            let descendant = target.len() > module.len() && target.starts_with(module);
            if target == *module || (*reexport && descendant) {
                continue;
            }
            edges
                .entry(module.clone())
                .or_default()
                .entry(target)
                .or_default()
                .insert(path.join("::"));
        }
    }
    Crate {
        name: name.to_string(),
        modules,
        edges,
    }
}

/// The absolute path (inside the crate) a path names, if it names one of the crate's.
fn resolve(module: &ModPath, children: &[String], path: &[String]) -> Option<ModPath> {
    let (first, rest) = path.split_first()?;
    let mut base = match first.as_str() {
        "crate" => ModPath::new(),
        "self" => module.clone(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        child if children.iter().any(|c| c == child) => {
            let mut base = module.clone();
            base.push(child.to_string());
            base
        }
        _ => return None, // another crate, or a name in scope
    };
    let mut rest = rest;
    while let Some((segment, tail)) = rest.split_first() {
        if segment == "super" {
            base.pop()?;
            rest = tail;
        } else {
            break;
        }
    }
    base.extend(rest.iter().filter(|s| *s != "*" && *s != "self").cloned());
    Some(base)
}

/// Cycles (strongly connected sets of two modules or more), each sorted.
fn cycles(krate: &Crate) -> Vec<Vec<ModPath>> {
    let reach = |from: &ModPath| -> BTreeSet<ModPath> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(module) = stack.pop() {
            for next in krate.edges.get(&module).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&ModPath, BTreeSet<ModPath>> =
        krate.modules.keys().map(|m| (m, reach(m))).collect();
    let mut cycles = BTreeSet::new();
    for (module, reached) in &reaches {
        if !reached.contains(*module) {
            continue;
        }
        let cycle: Vec<ModPath> = reached
            .iter()
            .filter(|other| reaches.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        cycles.insert(cycle);
    }
    cycles.into_iter().collect()
}

fn describe_edges(krate: &Crate, cycle: &[ModPath]) -> String {
    let mut lines = Vec::new();
    for from in cycle {
        for (to, names) in krate.edges.get(from).into_iter().flatten() {
            if cycle.contains(to) {
                lines.push(format!(
                    "  {} -> {}: {}",
                    display(from),
                    display(to),
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    lines.join("\n")
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn read_file(text: &str) -> FileItems {
    let tokens = without_test_items(tokenize(&strip(text)));
    let mut items = FileItems {
        children: Vec::new(),
        paths: Vec::new(),
    };
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let mut i = 0;
    while i < tokens.len() {
        match ident(i) {
            Some("mod") => {
                if let (Some(name), Some(Token::Punct(';'))) = (ident(i + 1), tokens.get(i + 2)) {
                    items.children.push(name.to_string());
                }
                i += 1;
            }
            Some("use") => {
                let reexport = is_public(&tokens, i);
                let end = (i..tokens.len())
                    .find(|&j| tokens[j] == Token::Punct(';'))
                    .unwrap_or(tokens.len());
                let mut paths = Vec::new();
                use_tree(&tokens[i + 1..end], Vec::new(), &mut paths);
                items
                    .paths
                    .extend(paths.into_iter().map(|path| (path, reexport)));
                i = end;
            }
            Some(first) if tokens.get(i + 1) == Some(&Token::PathSep) => {
                let after_sep = i > 0 && tokens[i - 1] == Token::PathSep;
                let mut path = vec![first.to_string()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::PathSep)
                    && let Some(segment) = ident(j + 1)
                {
                    path.push(segment.to_string());
                    j += 2;
                }
                if !after_sep {
                    items.paths.push((path, false));
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    items
}

/// Whether the `use` at `at` is preceded by a visibility (`pub`, `pub(crate)`, …).
fn is_public(tokens: &[Token], at: usize) -> bool {
    let mut i = at;
    if i > 0 && tokens[i - 1] == Token::Punct(')') {
        while i > 0 && tokens[i - 1] != Token::Punct('(') {
            i -= 1;
        }
        i = i.saturating_sub(1);
    }
    i > 0 && tokens[i - 1] == Token::Ident("pub".into())
}

/// Expands a use tree (`a::{b, c::{d, e}}`, `x::*`, `y as z`) into its paths.
fn use_tree(tokens: &[Token], prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(s) if s == "as" => {
                // `x as y`: skip the alias.
                i += 2;
                continue;
            }
            Token::Ident(s) => path.push(s.clone()),
            Token::Punct('*') => path.push("*".into()),
            Token::PathSep => {}
            Token::Punct('{') => {
                let close = matching(tokens, i);
                let mut start = i + 1;
                let mut depth = 0;
                for j in i + 1..close {
                    match tokens[j] {
                        Token::Punct('{') => depth += 1,
                        Token::Punct('}') => depth -= 1,
                        Token::Punct(',') if depth == 0 => {
                            use_tree(&tokens[start..j], path.clone(), out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                use_tree(&tokens[start..close], path.clone(), out);
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The index of the bracket closing the one at `open` (or the end).
fn matching(tokens: &[Token], open: usize) -> usize {
    let (opening, closing) = match tokens[open] {
        Token::Punct('{') => ('{', '}'),
        Token::Punct('(') => ('(', ')'),
        _ => ('[', ']'),
    };
    let mut depth = 0;
    for (j, token) in tokens.iter().enumerate().skip(open) {
        if *token == Token::Punct(opening) {
            depth += 1;
        } else if *token == Token::Punct(closing) {
            depth -= 1;
            if depth == 0 {
                return j;
            }
        }
    }
    tokens.len()
}

/// Drops every item under `#[cfg(test)]` (with the attributes after it).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let attr = |i: usize| -> Option<usize> {
        // `#` `[` … `]`: the index after it.
        (tokens.get(i) == Some(&Token::Punct('#')) && tokens.get(i + 1) == Some(&Token::Punct('[')))
            .then(|| matching(&tokens, i + 1) + 1)
    };
    let cfg_test = [
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let is_cfg_test = |i: usize| tokens.get(i + 2..i + 7) == Some(&cfg_test[..]);
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        match attr(i) {
            Some(mut next) if is_cfg_test(i) => {
                while let Some(after) = attr(next) {
                    next = after;
                }
                // The item: up to its `;`, or its block.
                let mut j = next;
                while j < tokens.len() {
                    match tokens[j] {
                        Token::Punct(';') => break,
                        Token::Punct('{') => {
                            j = matching(&tokens, j);
                            break;
                        }
                        Token::Punct('(') | Token::Punct('[') => j = matching(&tokens, j) + 1,
                        _ => j += 1,
                    }
                }
                i = j + 1;
            }
            _ => {
                out.push(tokens[i].clone());
                i += 1;
            }
        }
    }
    out
}

fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push(Token::PathSep);
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    tokens
}

/// The text without comments and without the contents of string and character literals.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if (c == 'r' || (c == 'b' && at(i + 1) == 'r'))
            && !at(i.wrapping_sub(1)).is_alphanumeric()
            && {
                let start = if c == 'b' { i + 2 } else { i + 1 };
                let hashes = (start..).take_while(|&j| at(j) == '#').count();
                at(start + hashes) == '"'
            }
        {
            // A raw string: r"…", r#"…"#, br"…".
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = (start..).take_while(|&j| at(j) == '#').count();
            i = start + hashes + 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                    i += hashes + 1;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A character literal ('x', '\n', '\''), or a lifetime or label ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if at(i + 2) == '\'' {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}
