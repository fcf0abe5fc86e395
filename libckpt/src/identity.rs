//! Job identity: which job a job directory, a manifest and a rank file belong to.
//!
//! `ckpt run` creates a random job id (128 bits, hex) with the job directory and records it as
//! `job_id` in `<job_dir>/job.json`; ranks get it in `CKPT_JOB_ID`, write it into every manifest
//! and rank file, and key their node-local directory by it (`<local_base>/<job_id>/`). The id,
//! not the path, is the identity: a copied or renamed job directory carries its `job.json` and
//! restores; two jobs whose directories share a name never share node-local files.
//!
//! A job directory without an id in `job.json` (made by the library alone, without
//! `ckpt run`) is identified by its base name, as every version did before ids existed (their
//! `job.json` recorded that name as `job_id`, so their files keep matching).
//!
//! [`check`] tells whether a job directory is still the job's: the ranks call it before they
//! write into it, so a job whose directory was deleted or replaced under it stops instead of
//! writing into the new one (or recreating the deleted one).

use std::io::{self, Read};
use std::path::Path;

use serde::Deserialize;

use crate::storage::durable;

/// Name of the launcher's record of the job, inside the job directory.
pub const JOB_FILE: &str = "job.json";

/// `job.json` is a few hundred bytes; anything this large is not one.
const MAX_JOB_FILE: u64 = 1 << 20;

/// The one field of `job.json` the library reads (the launcher writes the rest).
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    job_id: Option<String>,
}

/// A new random job id: 128 bits from the kernel's random source, as 32 hex digits.
pub fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut got = 0;
    while got < bytes.len() {
        let rest = &mut bytes[got..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes; getrandom writes at
        // most that many and returns how many it wrote, or -1.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The bytes of `<job_dir>/job.json`, `Ok(None)` if there is none. Only a regular file of at
/// most 1 MiB is read.
pub fn read_job_file(job_dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match durable::open_regular(&job_dir.join(JOB_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_JOB_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_JOB_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_JOB_FILE} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// The id recorded in `<job_dir>/job.json`: `Ok(None)` if there is no such file or it records
/// no id; an error if it exists but cannot be read or parsed.
pub fn read_id(job_dir: &Path) -> io::Result<Option<String>> {
    let Some(bytes) = read_job_file(job_dir)? else {
        return Ok(None);
    };
    let parsed: IdOnly = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(parsed.job_id.filter(|id| !id.is_empty()))
}

/// The id of a job directory that records none: its base name (`job` for a path without one).
pub fn legacy_id(job_dir: &Path) -> String {
    job_dir
        .file_name()
        .map_or_else(|| "job".into(), |n| n.to_string_lossy().into_owned())
}

/// The id of `job_dir`: the one in its `job.json`, else (no file, no id, or an unreadable
/// file) its [`legacy_id`].
pub fn id_of(job_dir: &Path) -> String {
    read_id(job_dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| legacy_id(job_dir))
}

/// Whether `job_dir` is still the directory of job `id`: it exists, and its `job.json` records
/// `id` (or, for a job identified by its base name, records no id). `Err` says what was found
/// instead, for an error that names the directory.
pub fn check(job_dir: &Path, id: &str) -> Result<(), String> {
    match std::fs::metadata(job_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("it is no longer a directory".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err("it was deleted".into());
        }
        Err(e) => return Err(format!("it cannot be read: {e}")),
    }
    let file = job_dir.join(JOB_FILE);
    match read_id(job_dir) {
        Ok(Some(found)) if found == id => Ok(()),
        Ok(Some(found)) => Err(format!(
            "{} now records job {found}: the directory was replaced",
            file.display()
        )),
        Ok(None) if id == legacy_id(job_dir) && !file.exists() => Ok(()),
        Ok(None) if file.exists() => Err(format!(
            "{} records no job id: the directory was replaced",
            file.display()
        )),
        Ok(None) => Err(format!(
            "{} does not exist (without it, the directory is job {}): the directory was \
             replaced or emptied",
            file.display(),
            legacy_id(job_dir)
        )),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_job_directory_is_checked_by_its_recorded_id() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        std::fs::create_dir(&dir).unwrap();
        // No job.json: identified by the base name (a job of the library alone, or older).
        assert_eq!(id_of(&dir), "job");
        assert_eq!(check(&dir, "job"), Ok(()));
        assert!(check(&dir, "abc").is_err());
        std::fs::write(
            dir.join(JOB_FILE),
            r#"{"version":1,"job_id":"abc","ranks":4}"#,
        )
        .unwrap();
        assert_eq!(id_of(&dir), "abc");
        assert_eq!(check(&dir, "abc"), Ok(()));
        let other = check(&dir, "def").unwrap_err();
        assert!(other.ends_with("job.json now records job abc: the directory was replaced"));
        // The base name no longer identifies a job whose job.json records an id.
        assert!(check(&dir, "job").is_err());
        std::fs::write(dir.join(JOB_FILE), "{}").unwrap();
        assert!(check(&dir, "abc")
            .unwrap_err()
            .contains("records no job id"));
        std::fs::write(dir.join(JOB_FILE), "not json").unwrap();
        assert!(check(&dir, "abc").unwrap_err().starts_with("cannot read"));
        std::fs::remove_file(dir.join(JOB_FILE)).unwrap();
        assert!(check(&dir, "abc")
            .unwrap_err()
            .contains("job.json does not exist (without it, the directory is job job)"));
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(check(&dir, "abc"), Err("it was deleted".into()));
        assert_eq!(check(&dir, "job"), Err("it was deleted".into()));
    }
}
