use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use expect_test::expect;

use super::*;
use crate::config::{LayerPlan, Platform};

fn layer(src: &Path, dest: &str) -> LayerPlan {
    LayerPlan {
        src_text: "src".into(),
        dest_text: dest.into(),
        src: [(Platform::linux_amd64(), src.to_path_buf())].into(),
        dest: dest.trim_start_matches('/').to_string(),
        mode: None,
        dir_mode: 0o755,
        uid: 0,
        gid: 0,
        include: None,
        exclude: None,
        globs: Vec::new(),
        delete: Vec::new(),
        xattrs: false,
    }
}

fn tree(root: &Path, mtime_offset: i64, umask_group_write: bool) {
    fs::create_dir_all(root.join("b/c")).expect("mkdir");
    fs::write(root.join("a.txt"), b"alpha").expect("write");
    fs::write(root.join("b/run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    fs::write(root.join("b/c/data.pyc"), vec![7u8; 1000]).expect("write");
    std::os::unix::fs::symlink("../a.txt", root.join("b/link")).expect("symlink");
    let exec = if umask_group_write { 0o775 } else { 0o755 };
    fs::set_permissions(root.join("b/run.sh"), fs::Permissions::from_mode(exec)).expect("chmod");
    let plain = if umask_group_write { 0o664 } else { 0o600 };
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(plain)).expect("chmod");
    let status = Command::new("touch")
        .arg("-d")
        .arg(format!("@{}", 1_600_000_000 + mtime_offset))
        .arg(root.join("a.txt"))
        .arg(root.join("b/run.sh"))
        .status()
        .expect("touch");
    assert!(status.success());
}

fn tar_bytes(entries: &[Entry], mtime: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write(entries, mtime, &mut out, &mut |_| {}).expect("write tar");
    out
}

fn listing(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layer.tar");
    fs::write(&path, bytes).expect("write");
    let out = Command::new("tar")
        .args(["--numeric-owner", "--utc", "-tvf"])
        .arg(&path)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn same_content_same_bytes_whatever_the_mtimes_and_umask() {
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    tree(one.path(), 0, false);
    tree(two.path(), 12345, true);
    let a = collect(&layer(one.path(), "/app/"), one.path()).expect("collect");
    let b = collect(&layer(two.path(), "/app/"), two.path()).expect("collect");
    assert_eq!(tar_bytes(&a, 0), tar_bytes(&b, 0));
    // Stat keys name files, not content: equal for the same files collected again,
    // different for other files, never given for files changed in the last two seconds.
    let now = std::time::SystemTime::now();
    assert_eq!(stat_key(&a, 0, now), None, "just written: not trusted yet");
    let later = now + std::time::Duration::from_secs(3);
    let again = collect(&layer(one.path(), "/app/"), one.path()).expect("collect");
    assert!(stat_key(&a, 0, later).is_some());
    assert_eq!(stat_key(&a, 0, later), stat_key(&again, 0, later));
    assert_ne!(stat_key(&a, 0, later), stat_key(&b, 0, later));
    assert_ne!(
        stat_key(&a, 0, later),
        stat_key(&a, 1, later),
        "the mtime is part of the key"
    );
    expect![[r#"
        drwxr-xr-x 0/0 0 1970-01-01 00:00 app/
        -rw-r--r-- 0/0 5 1970-01-01 00:00 app/a.txt
        drwxr-xr-x 0/0 0 1970-01-01 00:00 app/b/
        drwxr-xr-x 0/0 0 1970-01-01 00:00 app/b/c/
        -rw-r--r-- 0/0 1000 1970-01-01 00:00 app/b/c/data.pyc
        lrwxrwxrwx 0/0 0 1970-01-01 00:00 app/b/link -> ../a.txt
        -rwxr-xr-x 0/0 18 1970-01-01 00:00 app/b/run.sh"#]]
    .assert_eq(&listing(&tar_bytes(&a, 0)));
    fs::write(one.path().join("a.txt"), b"other, longer").expect("write");
    let changed = collect(&layer(one.path(), "/app/"), one.path()).expect("collect");
    assert_ne!(
        stat_key(&a, 0, later),
        stat_key(&changed, 0, later),
        "a write changes the key"
    );
}

#[test]
fn owner_mode_globs_and_parents() {
    let src = tempfile::tempdir().expect("tempdir");
    tree(src.path(), 0, false);
    let mut plan = layer(src.path(), "/srv/www/");
    plan.uid = 1000;
    plan.gid = 100;
    plan.mode = Some(0o600);
    plan.exclude = Some(
        globset::GlobSetBuilder::new()
            .add(globset::Glob::new("**/*.pyc").expect("glob"))
            .build()
            .expect("globset"),
    );
    let entries = collect(&plan, src.path()).expect("collect");
    expect![[r#"
        drwxr-xr-x 0/0 0 1970-01-01 00:00 srv/
        drwxr-xr-x 1000/100 0 1970-01-01 00:00 srv/www/
        -rw------- 1000/100 5 1970-01-01 00:00 srv/www/a.txt
        drwxr-xr-x 1000/100 0 1970-01-01 00:00 srv/www/b/
        drwxr-xr-x 1000/100 0 1970-01-01 00:00 srv/www/b/c/
        lrwxrwxrwx 1000/100 0 1970-01-01 00:00 srv/www/b/link -> ../a.txt
        -rw------- 1000/100 18 1970-01-01 00:00 srv/www/b/run.sh"#]]
    .assert_eq(&listing(&tar_bytes(&entries, 0)));

    // Include: only matching files, and the directories that lead to them.
    let mut plan = layer(src.path(), "/x/");
    plan.include = Some(
        globset::GlobSetBuilder::new()
            .add(globset::Glob::new("**/*.sh").expect("glob"))
            .build()
            .expect("globset"),
    );
    let entries = collect(&plan, src.path()).expect("collect");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["x/", "x/b/", "x/b/run.sh"]);
}

#[test]
fn single_file_sources() {
    let src = tempfile::tempdir().expect("tempdir");
    tree(src.path(), 0, false);
    let file = src.path().join("b/run.sh");
    let into_dir = collect(&layer(&file, "/usr/local/bin/"), &file).expect("collect");
    let renamed = collect(&layer(&file, "/entry"), &file).expect("collect");
    let paths = |e: &[Entry]| e.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&into_dir),
        [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/run.sh"
        ]
    );
    assert_eq!(paths(&renamed), ["entry"]);
}

#[test]
fn long_names_use_pax_and_extract() {
    let src = tempfile::tempdir().expect("tempdir");
    let deep = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    fs::create_dir_all(src.path().join("d".repeat(120))).expect("mkdir");
    fs::write(src.path().join(&deep), b"deep").expect("write");
    let mid = format!("{}/{}", "m".repeat(90), "n".repeat(60));
    fs::create_dir_all(src.path().join("m".repeat(90))).expect("mkdir");
    fs::write(src.path().join(&mid), b"mid").expect("write");
    let entries = collect(&layer(src.path(), "/"), src.path()).expect("collect");
    let bytes = tar_bytes(&entries, 1_700_000_000);
    let out = tempfile::tempdir().expect("tempdir");
    let tar_path = out.path().join("l.tar");
    fs::write(&tar_path, &bytes).expect("write");
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(out.path())
        .status()
        .expect("tar");
    assert!(status.success());
    assert_eq!(
        fs::read(out.path().join(&deep)).expect("read deep"),
        b"deep"
    );
    assert_eq!(fs::read(out.path().join(&mid)).expect("read mid"), b"mid");
    assert_eq!(bytes.len() % 512, 0);
}

#[test]
fn a_file_changed_during_the_build_is_an_error() {
    let src = tempfile::tempdir().expect("tempdir");
    tree(src.path(), 0, false);
    let entries = collect(&layer(src.path(), "/app/"), src.path()).expect("collect");
    fs::write(src.path().join("a.txt"), b"ALPHA").expect("write");
    let mut out = Vec::new();
    let err = write(&entries, 0, &mut out, &mut |_| {}).expect_err("changed file");
    assert!(
        err.to_string().contains("changed during the build"),
        "{err}"
    );
}

#[test]
fn deletes_become_whiteouts_with_their_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    tree(tmp.path(), 0, false);
    let mut plan = layer(tmp.path(), "/app/");
    plan.delete = vec!["etc/motd".into(), "usr/share/doc".into(), "top".into()];
    let entries = collect(&plan, tmp.path()).expect("collect");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for expected in [".wh.top", "etc/.wh.motd", "usr/share/.wh.doc"] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    // The base's directories keep their owner and mode: no entries for them.
    for absent in ["etc/", "usr/", "usr/share/"] {
        assert!(!paths.contains(&absent), "{absent} in {paths:?}");
    }
    let whiteout = entries
        .iter()
        .find(|e| e.path == "etc/.wh.motd")
        .expect("whiteout");
    assert_eq!(whiteout.kind, Kind::Whiteout);
    // Adding and deleting one path in the same layer is a contradiction.
    plan.delete = vec!["app/a.txt".into()];
    let error = collect(&plan, tmp.path()).expect_err("adds and deletes");
    assert!(
        error.to_string().contains("both adds and deletes"),
        "{error}"
    );
}

#[test]
fn xattrs_are_stored_only_when_asked() {
    let src = tempfile::tempdir().expect("tempdir");
    tree(src.path(), 0, false);
    let set = |path: &Path, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
    };
    let file = src.path().join("a.txt");
    // Binary values with NULs, as file capabilities have; set out of name order.
    set(&file, "user.zeta", b"z\0z");
    set(&file, "user.alpha", b"a");
    set(&src.path().join("b"), "user.dir", b"d");

    let plain = collect(&layer(src.path(), "/app/"), src.path()).expect("collect");
    assert!(plain.iter().all(|e| e.xattrs.is_empty()), "{plain:?}");
    let mut asked = layer(src.path(), "/app/");
    asked.xattrs = true;
    let entries = collect(&asked, src.path()).expect("collect");
    let of = |path: &str| {
        entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.xattrs.clone())
            .unwrap_or_else(|| panic!("no {path}"))
    };
    assert_eq!(
        of("app/a.txt"),
        [
            ("user.alpha".to_string(), b"a".to_vec()),
            ("user.zeta".to_string(), b"z\0z".to_vec())
        ]
    );
    assert_eq!(of("app/b/"), [("user.dir".to_string(), b"d".to_vec())]);

    // GNU tar extracts them again, byte for byte.
    let bytes = tar_bytes(&entries, 0);
    let out = tempfile::tempdir().expect("tempdir");
    let tar_path = out.path().join("l.tar");
    fs::write(&tar_path, &bytes).expect("write");
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "-xf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(out.path())
        .status()
        .expect("tar");
    assert!(status.success());
    let get = |path: &Path, name: &str| {
        let mut value = vec![0u8; 64];
        let n = rustix::fs::lgetxattr(path, name, &mut value[..])
            .unwrap_or_else(|e| panic!("getxattr {name} on {}: {e}", path.display()));
        value.truncate(n);
        value
    };
    assert_eq!(get(&out.path().join("app/a.txt"), "user.zeta"), b"z\0z");
    assert_eq!(get(&out.path().join("app/a.txt"), "user.alpha"), b"a");
    assert_eq!(get(&out.path().join("app/b"), "user.dir"), b"d");

    // They are content: part of the bytes and of the stat key.
    assert_ne!(bytes, tar_bytes(&plain, 0));
    // (Setting one changes the file's ctime too; the key must not lean on that alone.)
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
    let mut edited = entries.clone();
    let a = edited
        .iter_mut()
        .find(|e| e.path == "app/a.txt")
        .expect("a.txt");
    a.xattrs[0].1 = b"b".to_vec();
    assert_ne!(stat_key(&entries, 0, later), stat_key(&edited, 0, later));
    assert_ne!(bytes, tar_bytes(&edited, 0));
}

#[test]
fn xattrs_of_a_symlinked_src_are_its_targets_and_bad_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("server");
    fs::write(&target, b"binary").expect("write");
    rustix::fs::lsetxattr(&target, "user.k", b"v", rustix::fs::XattrFlags::empty())
        .expect("setxattr");
    // `src` names a symlink: the target's content is stored, and its attributes with it.
    let link = dir.path().join("current");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let mut plan = layer(&link, "/app/server");
    plan.xattrs = true;
    let entries = collect(&plan, &link).expect("collect");
    let file = entries
        .iter()
        .find(|e| e.path == "app/server")
        .expect("app/server");
    assert!(matches!(file.kind, Kind::File { .. }), "{:?}", file.kind);
    assert_eq!(file.xattrs, [("user.k".to_string(), b"v".to_vec())]);

    // A PAX key ends at its first `=`: such a name is refused, naming it.
    rustix::fs::lsetxattr(&target, "user.a=b", b"v", rustix::fs::XattrFlags::empty())
        .expect("setxattr");
    let error = collect(&plan, &link).expect_err("a name with =");
    assert!(error.to_string().contains("user.a=b"), "{error}");
}
