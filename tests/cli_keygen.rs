//! `koppeltaal-auth keygen`: overwriting only with `--force` (and tightening the file to 0600),
//! kids, never writing through a link, and the warning for an algorithm Koppeltaal refuses. The
//! round trip through the other commands is `cli.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[path = "support/cli.rs"]
mod cli_support;

use cli_support::{path, run, stderr, stdout};
use koppeltaal_auth::jwks::JwkSet;
use support::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_refuses_to_overwrite_without_force_and_takes_a_kid() {
    let dir = TempDir::new();
    let key = dir.path("key.pem");
    assert!(
        run(&["keygen", "--alg", "ES256", "--out", path(&key)])
            .await
            .status
            .success()
    );
    let again = run(&["keygen", "--alg", "ES256", "--out", path(&key)]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let forced = run(&[
        "keygen",
        "--alg",
        "ES256",
        "--kid",
        "kid-2",
        "--force",
        "--out",
        path(&key),
    ])
    .await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    let set: JwkSet = serde_json::from_str(&stdout(&forced)).unwrap();
    assert_eq!(set.keys[0].kid(), "kid-2");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an overwritten key file is tightened to 0600");
    }
    // Two keys in one set, kids by position.
    let second = dir.path("second.pem");
    assert!(
        run(&["keygen", "--alg", "ES384", "--out", path(&second)])
            .await
            .status
            .success()
    );
    let both = run(&[
        "jwks",
        "--key",
        path(&key),
        "--key",
        path(&second),
        "--kid",
        "first",
    ])
    .await;
    let set: JwkSet = serde_json::from_str(&stdout(&both)).unwrap();
    assert_eq!(set.keys.len(), 2);
    assert_eq!(set.keys[0].kid(), "first");
}

/// `keygen --force` never writes through a link: a symbolic link at `--out` is refused (its
/// target untouched, a dangling one's target not created), and a hard link is replaced by a new
/// file (the other name keeps the old contents). The key is written to a new 0600 file moved
/// into place: no temporary file is left behind.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_never_writes_through_a_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let target = dir.path("target.txt");
    std::fs::write(&target, "precious").unwrap();
    let link = dir.path("link.pem");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for force in [false, true] {
        let mut args = vec!["keygen", "--alg", "ES384", "--out", path(&link)];
        if force {
            args.push("--force");
        }
        let output = run(&args).await;
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(
            stderr(&output).contains("symbolic link"),
            "{}",
            stderr(&output)
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    }
    let dangling = dir.path("dangling.pem");
    let nowhere = dir.path("nowhere.pem");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    for force in [false, true] {
        let mut args = vec!["keygen", "--alg", "ES384", "--out", path(&dangling)];
        if force {
            args.push("--force");
        }
        let output = run(&args).await;
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(!nowhere.exists(), "the link's target is not created");
    }
    let original = dir.path("original.pem");
    std::fs::write(&original, "old contents").unwrap();
    std::fs::set_permissions(&original, std::fs::Permissions::from_mode(0o644)).unwrap();
    let hard = dir.path("hard.pem");
    std::fs::hard_link(&original, &hard).unwrap();
    let output = run(&["keygen", "--alg", "ES384", "--force", "--out", path(&hard)]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&original).unwrap(), "old contents");
    let written = std::fs::read_to_string(&hard).unwrap();
    assert!(written.starts_with("-----BEGIN PRIVATE KEY-----"));
    let mode = std::fs::metadata(&hard).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_warns_about_an_algorithm_koppeltaal_refuses() {
    let dir = TempDir::new();
    let es256 = run(&[
        "keygen",
        "--alg",
        "ES256",
        "--out",
        path(&dir.path("a.pem")),
    ])
    .await;
    assert!(es256.status.success());
    assert!(
        stderr(&es256).contains("warning: Koppeltaal's auth server accepts RS384, ES384 and RS512")
    );
    let rs512 = run(&[
        "keygen",
        "--alg",
        "RS512",
        "--out",
        path(&dir.path("b.pem")),
    ])
    .await;
    assert!(!stderr(&rs512).contains("warning"), "{}", stderr(&rs512));
}
