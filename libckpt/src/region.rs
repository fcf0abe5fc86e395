//! How an application describes its state: the PUP-style [`Protect`] trait and the [`Regions`]
//! visitor it is handed.
//!
//! One `protect` method serves both directions. When saving, each call streams the region into
//! the rank file; when restoring, each call fills the region from the file, checking its name,
//! kind, size and checksum. Bulk data (`slice`, `vec`) goes as raw bytes straight from and into
//! the application's memory; small typed values go through serde and postcard.
//!
//! Errors are latched: the first one is kept, later calls do nothing, and the library reports it
//! after `protect` returns, so `protect` itself stays free of `?`.

use std::path::Path;

use bytemuck::Pod;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::format::{FileError, RankFileReader, RankFileWriter, RegionKind};

/// State that can be checkpointed: visit every region that matters, in a fixed order.
///
/// ```ignore
/// impl ckpt::Protect for Heat {
///     fn protect(&mut self, r: &mut ckpt::Regions) {
///         r.vec("u", &mut self.u);          // bulk plain-old-data, raw bytes
///         r.value("step", &mut self.step);  // small typed value, serde
///     }
/// }
/// ```
pub trait Protect {
    /// Visits every region of the state. Called to save and to restore.
    fn protect(&mut self, r: &mut Regions<'_>);
}

/// Prefix of the library's own region names (`@ckpt/lib`, `@ckpt/msglog`).
pub(crate) const RESERVED: &str = "@ckpt/";

/// Where a save or restore is happening, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site<'p> {
    pub rank: i32,
    pub epoch: u64,
    pub path: &'p Path,
}

enum Mode<'a> {
    Save {
        out: &'a mut RankFileWriter,
        /// Called once after the first region is written (fault injection point).
        after_first: Option<&'a mut dyn FnMut(&mut RankFileWriter)>,
    },
    Restore {
        file: &'a RankFileReader,
        visited: Vec<bool>,
    },
}

/// The visitor handed to [`Protect::protect`]. See the module documentation.
pub struct Regions<'a> {
    mode: Mode<'a>,
    site: Site<'a>,
    names: Vec<String>,
    bytes: u64,
    error: Option<Error>,
}

impl<'a> Regions<'a> {
    pub(crate) fn saving(
        out: &'a mut RankFileWriter,
        site: Site<'a>,
        after_first: Option<&'a mut dyn FnMut(&mut RankFileWriter)>,
    ) -> Self {
        Regions {
            mode: Mode::Save { out, after_first },
            site,
            names: Vec::new(),
            bytes: 0,
            error: None,
        }
    }

    pub(crate) fn restoring(file: &'a RankFileReader, site: Site<'a>) -> Self {
        let n = file.table().regions.len();
        Regions {
            mode: Mode::Restore {
                file,
                visited: vec![false; n],
            },
            site,
            names: Vec::new(),
            bytes: 0,
            error: None,
        }
    }

    /// True while restoring (for state that must be rebuilt after a restore, e.g. caches).
    pub fn is_restoring(&self) -> bool {
        matches!(self.mode, Mode::Restore { .. })
    }

    /// A bulk region of fixed length: saved as raw bytes, restored in place. Restoring fails if
    /// the checkpoint holds a different number of elements or element size.
    pub fn slice<T: Pod>(&mut self, name: &str, data: &mut [T]) {
        let elem_size = std::mem::size_of::<T>() as u32;
        if !self.begin(name) {
            return;
        }
        match &mut self.mode {
            Mode::Save { .. } => self.save(
                name,
                RegionKind::Bulk { elem_size },
                bytemuck::cast_slice(data),
            ),
            Mode::Restore { .. } => {
                let Some(idx) = self.lookup(name, RegionKind::Bulk { elem_size }) else {
                    return;
                };
                let len = self.entry_len(idx);
                let want = std::mem::size_of_val(data) as u64;
                if len != want {
                    self.region_error(
                        name,
                        format!(
                            "checkpoint holds {} elements of {elem_size} bytes, the application has {}",
                            len / elem_size.max(1) as u64,
                            data.len()
                        ),
                    );
                    return;
                }
                self.read(idx, bytemuck::cast_slice_mut(data));
            }
        }
    }

    /// A bulk region whose length may change: saved as raw bytes; restoring resizes the vector
    /// to the checkpointed length, then fills it in place.
    pub fn vec<T: Pod>(&mut self, name: &str, data: &mut Vec<T>) {
        let elem_size = std::mem::size_of::<T>() as u32;
        if self.is_restoring() {
            if self.error.is_some() || self.names.iter().any(|n| n == name) {
                // Let `slice` report the duplicate or do nothing after an error.
                self.slice(name, data.as_mut_slice());
                return;
            }
            if let Some(idx) = self.peek(name) {
                let len = self.entry_len(idx);
                if elem_size > 0 && len % elem_size as u64 == 0 {
                    let n = (len / elem_size as u64) as usize;
                    if data.len() != n {
                        // A fresh zeroed allocation (calloc) instead of resizing: the kernel
                        // hands out zero pages lazily, so the read is the first touch.
                        *data = bytemuck::zeroed_vec(n);
                    }
                }
            }
        }
        self.slice(name, data.as_mut_slice());
    }

    /// A small typed value, encoded with postcard. Use `slice`/`vec` for anything large.
    pub fn value<T: Serialize + DeserializeOwned>(&mut self, name: &str, v: &mut T) {
        if !self.begin(name) {
            return;
        }
        match &mut self.mode {
            Mode::Save { .. } => match postcard::to_stdvec(v) {
                Ok(bytes) => self.save(name, RegionKind::Value, &bytes),
                Err(e) => self.protect_error(name, format!("cannot encode value: {e}")),
            },
            Mode::Restore { .. } => {
                let Some(idx) = self.lookup(name, RegionKind::Value) else {
                    return;
                };
                let mut buf = vec![0u8; self.entry_len(idx) as usize];
                if !self.read(idx, &mut buf) {
                    return;
                }
                // Every byte must be consumed: a value saved as another type must not be
                // decoded from a prefix of itself.
                match postcard::take_from_bytes(&buf) {
                    Ok((x, [])) => *v = x,
                    Ok((_, rest)) => self.region_error(
                        name,
                        format!(
                            "checkpointed value is not a {} ({} bytes left over)",
                            std::any::type_name::<T>(),
                            rest.len()
                        ),
                    ),
                    Err(e) => self.region_error(
                        name,
                        format!("cannot decode value as {}: {e}", std::any::type_name::<T>()),
                    ),
                }
            }
        }
    }

    /// Saves or restores one of the library's own sections (message log, library state).
    pub(crate) fn internal(&mut self, name: &str, kind: RegionKind, bytes: &mut Vec<u8>) {
        if !self.begin_internal(name) {
            return;
        }
        match &mut self.mode {
            Mode::Save { .. } => {
                let b = std::mem::take(bytes);
                self.save(name, kind, &b);
                *bytes = b;
            }
            Mode::Restore { .. } => {
                let Some(idx) = self.lookup(name, kind) else {
                    return;
                };
                bytes.resize(self.entry_len(idx) as usize, 0);
                self.read(idx, bytes);
            }
        }
    }

    /// Ends the visit: reports the latched error, or on restore any region of the file that the
    /// application did not visit. Returns the bytes saved or restored.
    pub(crate) fn finish(self) -> Result<u64, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if let Mode::Restore { file, visited } = &self.mode {
            let missing: Vec<&str> = file
                .table()
                .regions
                .iter()
                .zip(visited)
                .filter(|(_, v)| !**v)
                .map(|(r, _)| r.name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(Error::Region {
                    rank: self.site.rank,
                    epoch: self.site.epoch,
                    path: self.site.path.to_owned(),
                    region: missing.join(", "),
                    cause: "in the checkpoint but not visited by the application's protect()"
                        .into(),
                });
            }
        }
        Ok(self.bytes)
    }

    /// Registers `name`; false if an error is latched or the name was already used.
    fn begin(&mut self, name: &str) -> bool {
        if self.error.is_none() && name.starts_with(RESERVED) {
            self.protect_error(
                name,
                format!("names starting with {RESERVED:?} are reserved for the library"),
            );
        }
        self.begin_internal(name)
    }

    /// [`Regions::begin`] without the reserved-prefix check, for the library's own sections.
    fn begin_internal(&mut self, name: &str) -> bool {
        if self.error.is_some() {
            return false;
        }
        if self.names.iter().any(|n| n == name) {
            self.protect_error(
                name,
                "visited twice in one protect() call; names must be unique".into(),
            );
            return false;
        }
        self.names.push(name.to_owned());
        true
    }

    fn save(&mut self, name: &str, kind: RegionKind, bytes: &[u8]) {
        let Mode::Save { out, after_first } = &mut self.mode else {
            return;
        };
        if let Err(source) = out.region(name, kind, bytes) {
            self.error = Some(Error::Io {
                rank: self.site.rank,
                op: "write checkpoint file",
                path: self.site.path.to_owned(),
                source,
            });
            return;
        }
        self.bytes += bytes.len() as u64;
        if let Some(hook) = after_first.take() {
            hook(out);
        }
    }

    fn peek(&self, name: &str) -> Option<usize> {
        match &self.mode {
            Mode::Restore { file, .. } => file.find(name).map(|(i, _)| i),
            Mode::Save { .. } => None,
        }
    }

    fn entry_len(&self, idx: usize) -> u64 {
        match &self.mode {
            Mode::Restore { file, .. } => file.table().regions[idx].len,
            Mode::Save { .. } => 0,
        }
    }

    /// Finds region `name` in the file and checks its kind.
    fn lookup(&mut self, name: &str, kind: RegionKind) -> Option<usize> {
        let Mode::Restore { file, visited } = &mut self.mode else {
            return None;
        };
        let found = file.find(name).map(|(i, e)| (i, e.kind));
        match found {
            None => {
                self.region_error(
                    name,
                    "visited by protect() but not in the checkpoint".into(),
                );
                None
            }
            Some((_, k)) if k != kind => {
                self.region_error(
                    name,
                    format!("checkpoint holds {k:?}, the application asks for {kind:?}"),
                );
                None
            }
            Some((i, _)) => {
                visited[i] = true;
                Some(i)
            }
        }
    }

    fn read(&mut self, idx: usize, dest: &mut [u8]) -> bool {
        let Mode::Restore { file, .. } = &self.mode else {
            return false;
        };
        match file.read_into(idx, dest) {
            Ok(()) => {
                self.bytes += dest.len() as u64;
                true
            }
            Err(e) => {
                self.error = Some(file_error(e, self.site, "read checkpoint file"));
                false
            }
        }
    }

    fn region_error(&mut self, name: &str, cause: String) {
        self.error = Some(Error::Region {
            rank: self.site.rank,
            epoch: self.site.epoch,
            path: self.site.path.to_owned(),
            region: name.to_owned(),
            cause,
        });
    }

    fn protect_error(&mut self, name: &str, cause: String) {
        self.error = Some(Error::Protect {
            rank: self.site.rank,
            region: name.to_owned(),
            cause,
        });
    }
}

/// Wraps a format-level error with the rank, epoch and file it is about.
pub(crate) fn file_error(e: FileError, site: Site<'_>, op: &'static str) -> Error {
    match e {
        FileError::Io(source) => Error::Io {
            rank: site.rank,
            op,
            path: site.path.to_owned(),
            source,
        },
        FileError::Corrupt(cause) => Error::Corrupt {
            rank: site.rank,
            epoch: site.epoch,
            path: site.path.to_owned(),
            cause,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Corruption;
    use crate::format::FileIdentity;
    use std::os::unix::fs::FileExt;

    const RANK: i32 = 3;
    const EPOCH: u64 = 5;

    fn id() -> FileIdentity {
        FileIdentity {
            job: "job-r".into(),
            epoch: EPOCH,
            rank: RANK as u32,
            nranks: 4,
        }
    }

    fn site(path: &Path) -> Site<'_> {
        Site {
            rank: RANK,
            epoch: EPOCH,
            path,
        }
    }

    #[derive(Debug, Default, PartialEq)]
    struct State {
        u: Vec<f64>,
        fixed: [u32; 4],
        step: (u64, String),
        lib: Vec<u8>,
        restored: bool,
    }

    impl Protect for State {
        fn protect(&mut self, r: &mut Regions<'_>) {
            r.vec("u", &mut self.u);
            r.slice("fixed", &mut self.fixed);
            r.value("step", &mut self.step);
            r.internal("lib", RegionKind::LibState, &mut self.lib);
            self.restored = r.is_restoring();
        }
    }

    fn sample() -> State {
        State {
            u: (0..1000).map(|i| i as f64 * 0.25 - 3.0).collect(),
            fixed: [1, 2, 3, u32::MAX],
            step: (42, "restart here".into()),
            lib: vec![9, 8, 7],
            restored: false,
        }
    }

    /// A `Protect` made of a closure, for applications that describe their regions oddly.
    struct With<F>(F);

    impl<F: FnMut(&mut Regions<'_>)> Protect for With<F> {
        fn protect(&mut self, r: &mut Regions<'_>) {
            (self.0)(r)
        }
    }

    fn save(path: &Path, state: &mut impl Protect) -> Result<u64, Error> {
        let mut w = RankFileWriter::create(path, id(), "node-a").unwrap();
        let mut r = Regions::saving(&mut w, site(path), None);
        state.protect(&mut r);
        let n = r.finish()?;
        w.finish().unwrap();
        Ok(n)
    }

    fn restore(path: &Path, state: &mut impl Protect) -> Result<u64, Error> {
        let file = RankFileReader::open(path, &id()).unwrap();
        let mut r = Regions::restoring(&file, site(path));
        state.protect(&mut r);
        r.finish()
    }

    /// A file holding `sample()`.
    fn saved() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank-000003.ckpt");
        save(&path, &mut sample()).unwrap();
        (dir, path)
    }

    /// Asserts `e` is a region error about `region`, with this site, whose cause contains `cause`.
    fn assert_region_error(e: Error, path: &Path, region: &str, cause: &str) {
        match e {
            Error::Region {
                rank,
                epoch,
                path: p,
                region: r,
                cause: c,
            } => {
                assert_eq!((rank, epoch, p.as_path()), (RANK, EPOCH, path));
                assert_eq!(r, region);
                assert!(c.contains(cause), "cause {c:?} lacks {cause:?}");
            }
            other => panic!("expected a region error about {region:?}, got {other:?}"),
        }
    }

    #[test]
    fn save_then_restore_gives_back_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rank-000003.ckpt");
        let mut original = sample();
        let saved = save(&path, &mut original).unwrap();
        let encoded_step = postcard::to_stdvec(&original.step).unwrap().len() as u64;
        assert_eq!(saved, 8 * 1000 + 4 * 4 + encoded_step + 3);
        assert!(!original.restored);

        let mut back = State::default();
        assert_eq!(restore(&path, &mut back).unwrap(), saved);
        assert!(back.restored);
        back.restored = false;
        assert_eq!(back, original);

        // A longer vector is shrunk to the checkpointed length.
        let mut longer = State {
            u: vec![1.0; 5000],
            lib: vec![0; 100],
            ..State::default()
        };
        restore(&path, &mut longer).unwrap();
        longer.restored = false;
        assert_eq!(longer, original);
    }

    #[test]
    fn slice_of_another_length_is_refused() {
        let (_dir, path) = saved();
        let mut s = sample();
        let mut fixed = [0u32; 5];
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                r.vec("u", &mut s.u);
                r.slice("fixed", &mut fixed);
                r.value("step", &mut s.step);
                r.internal("lib", RegionKind::LibState, &mut s.lib);
            }),
        )
        .unwrap_err();
        assert_region_error(err, &path, "fixed", "holds 4 elements");
        assert_eq!(fixed, [0; 5], "nothing read into a mismatched slice");
    }

    #[test]
    fn first_error_is_kept_and_later_regions_are_left_alone() {
        let (_dir, path) = saved();
        let mut s = State::default();
        let mut fixed = [0u32; 3];
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                r.vec("u", &mut s.u);
                r.slice("fixed", &mut fixed);
                r.value("step", &mut s.step);
                r.value("absent", &mut 0u8);
            }),
        )
        .unwrap_err();
        assert_region_error(err, &path, "fixed", "holds 4 elements");
        assert_eq!(s.u, sample().u, "regions before the error are restored");
        assert_eq!(
            s.step,
            <(u64, String)>::default(),
            "regions after it are not"
        );
    }

    #[test]
    fn region_missing_from_the_file_is_named() {
        let (_dir, path) = saved();
        let mut s = State::default();
        let mut extra = 0u64;
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                s.protect(r);
                r.value("extra", &mut extra);
            }),
        )
        .unwrap_err();
        assert_region_error(err, &path, "extra", "not in the checkpoint");

        // Also for a vector (which looks the region up before resizing).
        let mut v: Vec<f64> = vec![1.0];
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                s.protect(r);
                r.vec("extra vec", &mut v);
            }),
        )
        .unwrap_err();
        assert_region_error(err, &path, "extra vec", "not in the checkpoint");
        assert_eq!(v, [1.0]);
    }

    #[test]
    fn regions_not_visited_are_named() {
        let (_dir, path) = saved();
        let mut s = State::default();
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                r.vec("u", &mut s.u);
                r.value("step", &mut s.step);
            }),
        )
        .unwrap_err();
        assert_region_error(err, &path, "fixed, lib", "not visited");
    }

    #[test]
    fn name_visited_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.ckpt");
        let (mut a, mut b) = (vec![1.0f64; 3], vec![2.0f64; 3]);
        let err = save(
            &path,
            &mut With(|r: &mut Regions<'_>| {
                r.vec("u", &mut a);
                r.vec("u", &mut b);
            }),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Protect { rank: RANK, region, cause } if region == "u" && cause.contains("twice")),
            "{err:?}"
        );

        let (_dir, path) = saved();
        for twice in ["u", "step"] {
            let mut s = State::default();
            let err = restore(
                &path,
                &mut With(|r: &mut Regions<'_>| {
                    s.protect(r);
                    match twice {
                        "u" => r.vec("u", &mut s.u),
                        _ => r.value("step", &mut s.step),
                    }
                }),
            )
            .unwrap_err();
            assert!(
                matches!(&err, Error::Protect { rank: RANK, region, cause } if region == twice && cause.contains("twice")),
                "{twice}: {err:?}"
            );
        }
    }

    #[test]
    fn region_of_another_kind_is_refused() {
        let (_dir, path) = saved();
        let mut s = State::default();
        // "u" holds f64s; asking for f32s is a different element size.
        let mut f32s: Vec<f32> = Vec::new();
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| r.vec("u", &mut f32s)),
        )
        .unwrap_err();
        assert_region_error(err, &path, "u", "elem_size: 8");
        // A value where the file holds bulk data.
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| r.value("fixed", &mut s.fixed)),
        )
        .unwrap_err();
        assert_region_error(err, &path, "fixed", "Bulk");
    }

    #[test]
    fn damaged_payload_is_reported_with_rank_epoch_and_file() {
        let (_dir, path) = saved();
        let file = RankFileReader::open(&path, &id()).unwrap();
        let (_, u) = file.find("u").unwrap();
        let at = u.offset + 17;
        drop(file);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        match restore(&path, &mut State::default()).unwrap_err() {
            Error::Corrupt {
                rank,
                epoch,
                path: p,
                cause: Corruption::Checksum { what, .. },
            } => {
                assert_eq!((rank, epoch, p), (RANK, EPOCH, path));
                assert_eq!(what, "region \"u\"");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn value_saved_as_another_type_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut wide = (42u64, String::from("tail"));
        save(
            &path,
            &mut With(|r: &mut Regions<'_>| r.value("v", &mut wide)),
        )
        .unwrap();
        let mut narrow = 0u64;
        let err = restore(
            &path,
            &mut With(|r: &mut Regions<'_>| r.value("v", &mut narrow)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("region \"v\"") && err.contains("left over"),
            "{err}"
        );
        assert_eq!(narrow, 0, "the value must not be overwritten");
    }

    #[test]
    fn library_names_are_refused_to_the_application() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut x = 1u64;
        let err = save(
            &path,
            &mut With(|r: &mut Regions<'_>| r.value("@ckpt/lib", &mut x)),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("reserved for the library"), "{err}");
    }
}
