//! `ckpt list JOB_DIR [--json]`: a job's committed epochs, newest first, read from their
//! manifests, with the nodes their ranks ran on. A manifest that does not load is listed with its error (which names the file)
//! and the listing goes on: a damaged epoch is exactly what a user runs this to find. Epochs a
//! restart quarantined (found damaged; never restored again) are listed too, marked as such
//! with the reasons.

use std::path::Path;

use anyhow::{bail, Context as _};
use ckpt::manifest::{self, Manifest, Quarantine};
use ckpt::placement::Placement;
use ckpt::util::human_bytes;
use serde::Serialize;

use crate::report::{level, secs};
use crate::{clock, Outcome};

/// One epoch of the listing.
#[derive(Debug)]
pub struct Entry {
    /// The epoch.
    pub epoch: u64,
    /// Its manifest, or why it cannot be read.
    pub manifest: Result<Manifest, String>,
    /// For a quarantined epoch: its quarantine record, or why the record cannot be read.
    pub quarantine: Option<Result<Quarantine, String>>,
}

/// Prints the listing of `dir` to stdout.
pub fn run(dir: &Path, as_json: bool) -> anyhow::Result<Outcome> {
    let entries = entries(dir)?;
    if as_json {
        outln!(
            "{}",
            json(&entries).context("cannot encode the listing as JSON")?
        );
    } else if entries.is_empty() {
        outln!("no committed epochs in {}", dir.display());
    } else if entries.iter().all(|e| e.quarantine.is_some()) {
        outln!("no committed epochs in {}; quarantined:", dir.display());
        for l in table(&entries) {
            outln!("{l}");
        }
    } else {
        for l in table(&entries) {
            outln!("{l}");
        }
    }
    Ok(Outcome::Success)
}

/// The committed and quarantined epochs of `dir`, newest first.
pub fn entries(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("job directory {} does not exist", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
    let listed = manifest::listing(dir)
        .with_context(|| format!("cannot list manifests in {}", dir.display()))?;
    let mut all: Vec<(u64, bool)> = listed.committed.iter().map(|&e| (e, false)).collect();
    all.extend(listed.quarantined.iter().map(|&e| (e, true)));
    all.sort_unstable_by_key(|&(epoch, _)| std::cmp::Reverse(epoch));
    Ok(all
        .into_iter()
        .map(|(epoch, quarantined)| Entry {
            epoch,
            manifest: manifest::load(dir, epoch).map_err(|err| err.to_string()),
            quarantine: quarantined.then(|| {
                manifest::load_quarantine(dir, epoch).map_err(|err| {
                    let p = manifest::quarantine_path(dir, epoch);
                    format!("cannot read {}: {err}", p.display())
                })
            }),
        })
        .collect())
}

/// `quarantined 2026-04-20 14:03:12Z by launch 2: reasons`, or why the record is unreadable.
pub fn quarantine_note(q: &Result<Quarantine, String>) -> String {
    match q {
        Ok(q) => format!(
            "quarantined {} by launch {}: {}",
            clock::utc(q.unix_ms),
            q.launch,
            q.reasons.join("; ")
        ),
        Err(e) => format!("quarantined ({e})"),
    }
}

/// The nodes the epoch's ranks ran on, in order of first appearance.
fn nodes(m: &Manifest) -> Vec<String> {
    Placement::of_manifest(m)
        .map(|p| p.nodes().into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn levels(m: &Manifest) -> String {
    m.levels
        .iter()
        .map(|&l| level(l))
        .collect::<Vec<_>>()
        .join(",")
}

/// One epoch in `--json` output; fields in this order.
#[derive(Serialize)]
struct JsonEntry<'a> {
    epoch: u64,
    #[serde(flatten)]
    body: JsonBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantined: Option<JsonQuarantine<'a>>,
}

/// A quarantined epoch's record in `--json` output.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonQuarantine<'a> {
    Record {
        unix_ms: u64,
        utc: String,
        launch: u32,
        reasons: &'a [String],
    },
    Error {
        error: &'a str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonBody<'a> {
    Manifest {
        job: &'a str,
        committed_unix_ms: u64,
        committed_utc: String,
        launch: u32,
        poll: u64,
        ranks: u32,
        nodes: Vec<String>,
        payload_bytes: u64,
        file_bytes: u64,
        total_secs: f64,
        levels: Vec<&'static str>,
    },
    Error {
        error: &'a str,
    },
}

/// The listing as a pretty JSON array, one object per epoch (`epoch` and `error` only when
/// its manifest does not load; `quarantined` only for a quarantined epoch).
pub fn json(entries: &[Entry]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&entries.iter().map(json_entry).collect::<Vec<_>>())
}

fn json_entry(entry: &Entry) -> JsonEntry<'_> {
    JsonEntry {
        epoch: entry.epoch,
        quarantined: entry.quarantine.as_ref().map(|q| match q {
            Ok(q) => JsonQuarantine::Record {
                unix_ms: q.unix_ms,
                utc: clock::utc(q.unix_ms),
                launch: q.launch,
                reasons: &q.reasons,
            },
            Err(e) => JsonQuarantine::Error { error: e },
        }),
        body: match &entry.manifest {
            Ok(m) => JsonBody::Manifest {
                job: &m.job,
                committed_unix_ms: m.created_unix_ms,
                committed_utc: clock::utc(m.created_unix_ms),
                launch: m.launch,
                poll: m.poll,
                ranks: m.nranks,
                nodes: nodes(m),
                payload_bytes: m.payload_bytes(),
                file_bytes: m.file_bytes(),
                total_secs: m.total_secs,
                levels: m.levels.iter().map(|&l| level(l)).collect(),
            },
            Err(e) => JsonBody::Error { error: e },
        },
    }
}

/// The listing as aligned text lines with a header.
pub fn table(entries: &[Entry]) -> Vec<String> {
    const HEAD: [&str; 9] = [
        "EPOCH",
        "COMMITTED",
        "LAUNCH",
        "POLL",
        "RANKS",
        "NODES",
        "PAYLOAD",
        "TOTAL",
        "LEVELS",
    ];
    let rows: Vec<Result<[String; 9], String>> = entries
        .iter()
        .map(|e| (e.epoch, &e.manifest, &e.quarantine))
        .map(|(epoch, m, q)| match (m, q) {
            (_, Some(q)) => Err(format!(
                "{epoch:<w$}  {}",
                quarantine_note(q),
                w = HEAD[0].len()
            )),
            (Ok(m), None) => Ok([
                epoch.to_string(),
                clock::utc(m.created_unix_ms),
                m.launch.to_string(),
                m.poll.to_string(),
                m.nranks.to_string(),
                nodes(m).len().to_string(),
                human_bytes(m.payload_bytes()),
                secs(m.total_secs),
                levels(m),
            ]),
            (Err(e), None) => Err(format!("{epoch:<w$}  error: {e}", w = HEAD[0].len())),
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for row in rows.iter().flatten() {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 9]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    std::iter::once(line(&HEAD.map(String::from)))
        .chain(rows.iter().map(|r| match r {
            Ok(cells) => line(cells),
            Err(text) => text.clone(),
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    /// A job directory with epochs 3 and 4 published, epoch 5's manifest corrupted, and
    /// epoch 6 quarantined.
    fn job() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for e in [3, 4, 5, 6] {
            let mut m = testutil::manifest(e, 4);
            if e == 4 {
                // Ranks 0 and 2 on n1, 1 and 3 on n0.
                for (r, rec) in m.ranks.iter_mut().enumerate() {
                    rec.node = format!("n{}", (r + 1) % 2);
                }
            }
            manifest::publish(dir.path(), &m).unwrap();
        }
        let q = Quarantine {
            epoch: 6,
            unix_ms: 1_776_693_792_000,
            launch: 2,
            reasons: vec!["rank 1: checksum mismatch".into()],
        };
        manifest::quarantine(dir.path(), &q).unwrap();
        let bad = manifest::path(dir.path(), 5);
        let mut bytes = std::fs::read(&bad).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&bad, bytes).unwrap();
        dir
    }

    fn check(lines: Vec<String>, dir: &Path, expected: &[&str]) {
        let got: Vec<String> = lines
            .iter()
            .map(|l| l.replace(&dir.display().to_string(), "D"))
            // The checksums themselves depend on libckpt's encoding, not on the listing.
            .map(|l| l.split(": stored").next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn table_lists_newest_first_with_errors() {
        let dir = job();
        check(
            table(&entries(dir.path()).unwrap()),
            dir.path(),
            &[
                "EPOCH  COMMITTED             LAUNCH  POLL  RANKS  NODES  PAYLOAD  TOTAL   LEVELS",
                "6      quarantined 2026-04-20 14:03:12Z by launch 2: rank 1: checksum mismatch",
                "5      error: manifest D/manifests/epoch-00000005.manifest: checksum mismatch \
                 in manifest body",
                "4      2026-04-20 14:03:12Z  1       40    4      2      4.0 MiB  0.25 s  L1",
                "3      2026-04-20 14:03:12Z  1       30    4      1      4.0 MiB  0.25 s  L1",
            ],
        );
    }

    #[test]
    fn json_lists_every_epoch() {
        let dir = job();
        let text = json(&entries(dir.path()).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let all = v.as_array().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0]["epoch"], 6);
        assert_eq!(all[0]["poll"], 60);
        assert_eq!(all[0]["quarantined"]["launch"], 2);
        assert_eq!(
            all[0]["quarantined"]["reasons"],
            serde_json::json!(["rank 1: checksum mismatch"])
        );
        let all = &all[1..];
        assert!(all[1]["quarantined"].is_null());
        assert!(all[0]["error"]
            .as_str()
            .unwrap()
            .contains("epoch-00000005.manifest"));
        assert_eq!(all[0].as_object().unwrap().len(), 2);
        assert_eq!(all[1]["epoch"], 4);
        assert_eq!(all[1]["payload_bytes"], 4 << 20);
        assert_eq!(all[1]["levels"], serde_json::json!(["L1"]));
        assert_eq!(all[1]["nodes"], serde_json::json!(["n1", "n0"]));
        assert_eq!(all[2]["nodes"], serde_json::json!(["n0"]));
        assert_eq!(all[1]["committed_utc"], "2026-04-20 14:03:12Z");
    }

    #[test]
    fn empty_and_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(entries(dir.path()).unwrap().is_empty());
        let missing = dir.path().join("nope");
        let err = entries(&missing).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("job directory {} does not exist", missing.display())
        );
    }
}
