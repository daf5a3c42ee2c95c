//! The private key file: written without ever going through a link, readable by its owner only
//! from the moment it exists; read into memory that is wiped when dropped.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use koppeltaal_auth::{Algorithm, KeyId, SigningKey};

use crate::{Failure, failure};

/// Writes `pem` to `path`, refusing to replace a file unless `force`.
///
/// The key goes to a new file beside `path`, created with mode 0600, which is then moved into
/// place: a link at `path` is replaced, never written through (a hard link keeps its old
/// contents; a symbolic link at `path` is refused outright), and no other process can open the
/// key before it is complete. Without `force` the move fails if `path` appeared meanwhile.
pub(crate) fn write_private_key(path: &Path, pem: &[u8], force: bool) -> Result<(), Failure> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(failure(
                2,
                format!(
                    "{} is a symbolic link: refusing to write the key through it (give the \
                     real path, or remove the link)",
                    path.display()
                ),
            ));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(failure(2, format!("{} is not a file", path.display())));
        }
        Ok(_) if !force => {
            return Err(failure(
                2,
                format!("{} exists; pass --force to overwrite it", path.display()),
            ));
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(failure(
                2,
                format!("cannot check {}: {err}", path.display()),
            ));
        }
    }
    let temporary = temporary_beside(path)?;
    let result = write_new(&temporary, pem).and_then(|()| {
        if force {
            std::fs::rename(&temporary, path)
        } else {
            // `link` fails if `path` exists by now, and does not follow a link at it.
            std::fs::hard_link(&temporary, path).and_then(|()| std::fs::remove_file(&temporary))
        }
    });
    if let Err(err) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(if err.kind() == std::io::ErrorKind::AlreadyExists {
            failure(
                2,
                format!("{} exists; pass --force to overwrite it", path.display()),
            )
        } else {
            failure(2, format!("cannot write {}: {err}", path.display()))
        });
    }
    // Make the new directory entry durable too (best effort).
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A name for the new file in `path`'s directory.
fn temporary_beside(path: &Path) -> Result<PathBuf, Failure> {
    let name = path
        .file_name()
        .ok_or_else(|| failure(2, format!("{} is not a file name", path.display())))?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    Ok(path.with_file_name(temporary))
}

/// Creates `path` (which must not exist) readable by its owner only, and writes `pem`.
fn write_new(path: &Path, pem: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(pem)?;
    file.sync_all()
}

/// Loads the key at `path` (at most 1 MiB read, wiped from memory when done).
pub(crate) fn load_key(
    path: &Path,
    alg: Option<Algorithm>,
    kid: Option<&str>,
) -> Result<SigningKey, Failure> {
    let kid = kid.map_or(KeyId::Thumbprint, KeyId::from);
    SigningKey::from_pem_file(path, alg, kid).map_err(|err| {
        let mut failure = Failure::from(err);
        let shown = path.display().to_string();
        // A read error names the file already ("cannot read the key <path>", "<path> is larger
        // than ..."); a parse error does not.
        let named = failure.message.contains(&format!("the key {shown}"))
            || failure.message.contains(&format!("{shown} is larger than"));
        if !named {
            failure.message = format!("{shown}: {}", failure.message);
        }
        failure
    })
}
