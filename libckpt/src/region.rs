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
            Mode::Save { .. } => self.save(name, RegionKind::Bulk { elem_size }, bytemuck::cast_slice(data)),
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
                    data.resize((len / elem_size as u64) as usize, T::zeroed());
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
                match postcard::from_bytes(&buf) {
                    Ok(x) => *v = x,
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
        if !self.begin(name) {
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
                    cause: "in the checkpoint but not visited by the application's protect()".into(),
                });
            }
        }
        Ok(self.bytes)
    }

    /// Registers `name`; false if an error is latched or the name was already used.
    fn begin(&mut self, name: &str) -> bool {
        if self.error.is_some() {
            return false;
        }
        if self.names.iter().any(|n| n == name) {
            self.protect_error(name, "visited twice in one protect() call; names must be unique".into());
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
                self.region_error(name, "visited by protect() but not in the checkpoint".into());
                None
            }
            Some((_, k)) if k != kind => {
                self.region_error(name, format!("checkpoint holds {k:?}, the application asks for {kind:?}"));
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
