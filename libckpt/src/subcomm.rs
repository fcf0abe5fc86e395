//! Sub-communicators: [`Comm::dup`], [`Comm::split`] and [`Comm::cart`] make new
//! checkpoint-aware communicators, each with its own MPI communicator and its own
//! exactly-once accounting, quiesced and logged at every cut like the root one.
//!
//! # Ownership
//! Every communicator of a rank belongs to its [`Checkpointer`](crate::Checkpointer)'s
//! [`Family`] (index 0 is `ck.comm()`, then the others in creation order) and lives as long
//! as the checkpointer. A creation returns a [`SubComm`], a small `Copy` handle without a
//! lifetime, so it can be kept across `poll` (which takes the checkpointer mutably); the
//! communicator itself is reached with [`Checkpointer::sub`](crate::Checkpointer::sub),
//! whose `&Comm` borrows the checkpointer: the borrow checker keeps it from outliving the
//! checkpointer or being held over `poll`, as for `ck.comm()`. A handle of another
//! checkpointer is refused.
//!
//! # Creation
//! Collective over the parent communicator: every rank of the parent creates the same kind of
//! communicator with the same shape (`cart`'s dimensions and periodicity; `split`'s color and
//! key may differ per rank) as its creation number N (the N-th communicator it creates). The
//! ranks first exchange these (one non-blocking all-gather on the parent, under
//! `CKPT_TIMEOUT`); if they differ, or one rank's arguments are refused, every rank of the
//! parent gets [`Error::Communicator`] and nothing is created. Ranks that create on different
//! parents, or one that creates while the others checkpoint, wait for each other until the
//! deadline names the ranks that did not come and the job is aborted. Within a rank, a
//! creation cannot overlap a checkpoint: `poll` needs the checkpointer mutably.
//!
//! At every cut, all ranks must hold the same number of communicators (else
//! [`Error::Communicator`]); the snapshot records each one's state in creation order. A
//! restart creates them again in the same order: one that exists at `restore` takes its
//! state there, a later one when it is created (its rank count must match the snapshot's).

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::cart::Grid;
use crate::comm::{Comm, DrainReport};
use crate::error::{Error, Result};
use crate::protocol::msglog::{CommState, LogSet, StateParts};
use crate::stall::{self, Watch};

/// A communicator made by [`Comm::dup`], [`Comm::split`] or [`Comm::cart`]; reach it with
/// [`Checkpointer::sub`](crate::Checkpointer::sub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubComm {
    family: u64,
    index: usize,
}

impl SubComm {
    /// Its index in creation order (0 is `ck.comm()`).
    pub fn index(&self) -> usize {
        self.index
    }
}

static NEXT_FAMILY: AtomicU64 = AtomicU64::new(1);

/// Every communicator of one checkpointer, in creation order; owns them.
pub(crate) struct Family {
    id: u64,
    /// Boxed communicators (leaked by `boxed`), never moved nor freed before the family.
    comms: RefCell<Vec<NonNull<Comm>>>,
    /// Restored states of communicators not created yet, by index.
    restored: RefCell<(u64, Vec<Option<CommState>>)>,
    watch: Watch,
    world_rank: i32,
}

/// How a communicator is made from its parent.
#[derive(Debug, Clone, Copy)]
enum Kind<'a> {
    Dup,
    Split {
        color: i32,
        key: i32,
    },
    Cart {
        dims: &'a [i32],
        periodic: &'a [bool],
    },
}

impl Kind<'_> {
    fn name(&self) -> String {
        match self {
            Kind::Dup => "dup()".into(),
            Kind::Split { .. } => "split()".into(),
            Kind::Cart { dims, periodic } => format!("cart({dims:?}, {periodic:?})"),
        }
    }

    /// What every rank of the parent must agree on: the kind and the shape (a CRC of
    /// `cart`'s arguments; a split's color and key may differ).
    fn shape(&self) -> [u64; 2] {
        match self {
            Kind::Dup => [1, 0],
            Kind::Split { .. } => [2, 0],
            Kind::Cart { dims, periodic } => {
                let mut bytes: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
                bytes.extend(periodic.iter().map(|&p| u8::from(p)));
                [
                    3,
                    u64::from(crc32c::crc32c(&bytes)) | ((dims.len() as u64) << 32),
                ]
            }
        }
    }

    /// Why this rank's arguments are refused, if they are.
    fn check(&self, parent_size: i32) -> std::result::Result<Option<Grid>, String> {
        match self {
            Kind::Dup => Ok(None),
            Kind::Split { color, .. } if *color < 0 => Err(format!(
                "split(): color {color}: colors are 0 or more (every rank gets a communicator)"
            )),
            Kind::Split { .. } => Ok(None),
            Kind::Cart { dims, periodic } => Grid::new(dims, periodic, parent_size).map(Some),
        }
    }
}

impl Family {
    /// A family holding the root communicator (`raw`, a duplicate of the job's).
    pub(crate) fn new(raw: SimpleCommunicator, watch: Watch) -> Rc<Family> {
        let world_rank = raw.rank();
        let members = (0..raw.size()).collect();
        Rc::new_cyclic(|weak| {
            let root = Comm::new(raw, weak.clone(), 0, members, None);
            Family {
                id: NEXT_FAMILY.fetch_add(1, Ordering::Relaxed),
                comms: RefCell::new(vec![boxed(root)]),
                restored: RefCell::new((0, Vec::new())),
                watch,
                world_rank,
            }
        })
    }

    /// Communicator `index`, if there is one.
    pub(crate) fn get(&self, index: usize) -> Option<&Comm> {
        let p = *self.comms.borrow().get(index)?;
        // SAFETY: `p` comes from `Box::leak` (`boxed`) and is freed only when the family
        // drops, so it is valid for as long as `&self`; communicators are only ever used
        // through shared references.
        Some(unsafe { p.as_ref() })
    }

    /// The root communicator (`ck.comm()`).
    pub(crate) fn root(&self) -> &Comm {
        match self.get(0) {
            Some(c) => c,
            None => unreachable!("a family is created with its root communicator"),
        }
    }

    /// Every communicator, in creation order.
    pub(crate) fn all(&self) -> Vec<&Comm> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }

    /// Calls `f` on every communicator in creation order, without allocating (`poll`'s path).
    fn for_each(&self, mut f: impl FnMut(&Comm)) {
        for i in 0..self.len() {
            if let Some(c) = self.get(i) {
                f(c);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.comms.borrow().len()
    }

    /// The communicator of `h`, refusing a handle of another checkpointer.
    pub(crate) fn of(&self, h: SubComm) -> Result<&Comm> {
        match self.get(h.index).filter(|_| h.family == self.id) {
            Some(c) => Ok(c),
            None => Err(Error::Usage {
                rank: self.world_rank,
                what: format!(
                    "communicator handle #{} belongs to another checkpointer",
                    h.index
                ),
            }),
        }
    }

    /// The receives still pending on any communicator, described.
    pub(crate) fn pending_requests(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.all() {
            let label = |d: String| match c.index() {
                0 => d,
                i => format!("{d} on communicator #{i}"),
            };
            out.extend(c.pending_requests().into_iter().map(label));
        }
        out
    }

    /// Completes finished sends on every communicator.
    pub(crate) fn reap_sends(&self) {
        self.for_each(Comm::reap_sends);
    }

    /// Refuses every communicator's calls from now on.
    pub(crate) fn stop(&self, why: &str) {
        self.all().iter().for_each(|c| c.stop(why.to_owned()));
    }

    /// Messages in every communicator's log.
    pub(crate) fn logged(&self) -> usize {
        self.all().iter().map(|c| c.logged()).sum()
    }

    /// Every communicator's state, encoded for the snapshot (message log version 4).
    pub(crate) fn encode_state(&self) -> Vec<u8> {
        let comms = self.all();
        let books: Vec<_> = comms.iter().map(|c| c.books.borrow()).collect();
        let parts: Vec<StateParts<'_>> = books.iter().map(|b| b.ep.state()).collect();
        LogSet::encode_parts(&parts)
    }

    /// Takes over the restored states (after the restore cut): each communicator that exists
    /// now takes its own; the others' are kept for their creation.
    pub(crate) fn restore(&self, set: LogSet, epoch: u64) -> Result<()> {
        let mut later = Vec::new();
        for (i, state) in set.comms.into_iter().enumerate() {
            match self.get(i) {
                Some(c) => {
                    self.take_state(c, state, epoch)?;
                    later.push(None);
                }
                None => later.push(Some(state)),
            }
        }
        *self.restored.borrow_mut() = (epoch, later);
        Ok(())
    }

    /// Gives `state` to `c`, whose rank count must be the snapshot's.
    fn take_state(&self, c: &Comm, state: CommState, epoch: u64) -> Result<()> {
        let n = state.next_send.len();
        if n != c.size() as usize {
            return Err(Error::Communicator {
                rank: self.world_rank,
                index: c.index(),
                what: format!(
                    "it has {} ranks, epoch {epoch}'s snapshot of it has {n}: create the \
                     communicators in the same order and shape as the run that wrote it",
                    c.size()
                ),
            });
        }
        c.restore_state(state);
        Ok(())
    }

    /// Adds `comm` as the next communicator, with its restored state if the snapshot had one.
    fn adopt(&self, comm: Comm) -> Result<SubComm> {
        let index = comm.index();
        let (epoch, state) = {
            let mut r = self.restored.borrow_mut();
            (r.0, r.1.get_mut(index).and_then(Option::take))
        };
        self.comms.borrow_mut().push(boxed(comm));
        if let (Some(state), Some(c)) = (state, self.get(index)) {
            self.take_state(c, state, epoch)?;
        }
        Ok(SubComm {
            family: self.id,
            index,
        })
    }

    /// The second exchange of a cut, when there are sub-communicators: each rank's bookmark
    /// for each member of each sub-communicator, over the library's communicator `lib` (one
    /// non-blocking all-to-all under the timeout); then the drain of every communicator,
    /// the root's with `root_to_me` from the first exchange. Reports summed.
    pub(crate) fn drain_all(
        &self,
        lib: &SimpleCommunicator,
        watch: &Watch,
        key: &str,
        what: &str,
        root_to_me: &[u64],
    ) -> DrainReport {
        let comms = self.all();
        let subs = comms.len() - 1;
        let mut report = self.root().drain(root_to_me, watch, what);
        if subs == 0 {
            return report;
        }
        let world = lib.size() as usize;
        let mut send = vec![0u64; world * subs];
        for (c, comm) in comms[1..].iter().enumerate() {
            for (p, &b) in comm.bookmark().iter().enumerate() {
                send[comm.members()[p] as usize * subs + c] = b;
            }
        }
        let mut recv = vec![0u64; send.len()];
        mpi::request::scope(|scope| {
            let req = lib.immediate_all_to_all_into(scope, &send[..], &mut recv[..]);
            let label = || (format!("{key}-subs"), format!("{what} (sub-communicators)"));
            stall::wait_request(lib, watch, label, req);
        });
        for (c, comm) in comms[1..].iter().enumerate() {
            let to_me: Vec<u64> = comm
                .members()
                .iter()
                .map(|&w| recv[w as usize * subs + c])
                .collect();
            let what = format!("{what}, communicator #{}", c + 1);
            let r = comm.drain(&to_me, watch, &what);
            report.messages += r.messages;
            report.bytes += r.bytes;
        }
        report
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        // The newest first: sub-communicators before their parents.
        for p in self.comms.get_mut().drain(..).rev() {
            // SAFETY: `p` comes from `Box::leak` (`boxed`) and is dropped once, here; no
            // reference to it outlives the family (they borrow it).
            drop(unsafe { Box::from_raw(p.as_ptr()) });
        }
    }
}

fn boxed(c: Comm) -> NonNull<Comm> {
    NonNull::from(Box::leak(Box::new(c)))
}

impl Comm {
    /// A duplicate of this communicator (same ranks, same order), with its own messages
    /// (collective over this communicator; see the module documentation).
    pub fn dup(&self) -> Result<SubComm> {
        self.derive(Kind::Dup)
    }

    /// Splits this communicator: ranks with the same `color` (0 or more; every rank gets a
    /// communicator) form one, ordered by `key`, then by their rank here (collective over
    /// this communicator).
    pub fn split(&self, color: i32, key: i32) -> Result<SubComm> {
        self.derive(Kind::Split { color, key })
    }

    /// A Cartesian communicator over this one's ranks laid out row-major on `dims` (whose
    /// product must be this communicator's size), with `periodic[d]` saying whether dimension
    /// `d` wraps around; ranks keep their order (no reordering). Collective over this
    /// communicator; every rank passes the same arguments. Its ranks have
    /// [`Comm::coords`], [`Comm::rank_of`] and [`Comm::shift`].
    pub fn cart(&self, dims: &[i32], periodic: &[bool]) -> Result<SubComm> {
        self.derive(Kind::Cart { dims, periodic })
    }

    /// This rank's coordinates on a Cartesian communicator.
    pub fn coords(&self) -> Result<Vec<i32>> {
        Ok(self.cart_grid("coords")?.coords(self.rank()))
    }

    /// The rank at `coords` on a Cartesian communicator: periodic dimensions wrap around,
    /// `None` outside a non-periodic one.
    pub fn rank_of(&self, coords: &[i32]) -> Result<Option<i32>> {
        let g = self.cart_grid("rank_of")?;
        g.rank_of(coords).map_err(|m| self.refused("rank_of", m))
    }

    /// `MPI_Cart_shift`: `(source, dest)`, the ranks `disp` steps before and after this one
    /// along dimension `dim`; `None` past the edge of a non-periodic dimension (where MPI
    /// gives `MPI_PROC_NULL`). Suits [`Comm::sendrecv`], which skips a `None` side.
    pub fn shift(&self, dim: usize, disp: i32) -> Result<(Option<i32>, Option<i32>)> {
        let g = self.cart_grid("shift")?;
        g.shift(self.rank(), dim, disp)
            .map_err(|m| self.refused("shift", m))
    }

    /// The grid's dimensions, on a Cartesian communicator.
    pub fn dims(&self) -> Result<Vec<i32>> {
        Ok(self.cart_grid("dims")?.dims().to_vec())
    }

    fn cart_grid(&self, call: &str) -> Result<&Grid> {
        self.grid()
            .ok_or_else(|| self.refused(call, "not a Cartesian communicator (see Comm::cart)"))
    }

    fn refused(&self, call: &str, why: impl std::fmt::Display) -> Error {
        Error::Usage {
            rank: self.world_rank(),
            what: format!("communicator #{}: {call}: {why}", self.index()),
        }
    }

    /// Makes a communicator of kind `kind` from this one (see the module documentation).
    fn derive(&self, kind: Kind<'_>) -> Result<SubComm> {
        let family = self
            .family()
            .upgrade()
            .ok_or_else(|| self.refused(&kind.name(), "the checkpointer is gone"))?;
        if let Some(why) = self.books.borrow().ep.stopped() {
            return Err(self.refused(&kind.name(), why));
        }
        let index = family.len();
        let checked = kind.check(self.size());
        let [k, shape] = kind.shape();
        let mine = [index as u64, k, shape, u64::from(checked.is_ok())];
        let all = self.gather_descriptors(&family.watch, index, mine);
        let refuse = |what: String| Error::Communicator {
            rank: self.world_rank(),
            index,
            what,
        };
        let grid = checked.map_err(|e| refuse(format!("{}: {e}", kind.name())))?;
        for (r, d) in all.chunks(4).enumerate() {
            if d[3] == 0 {
                return Err(refuse(format!(
                    "rank {r} of communicator #{} refused its arguments to {}",
                    self.index(),
                    kind.name()
                )));
            }
            if d[..3] != mine[..3] {
                return Err(refuse(format!(
                    "rank {r} of communicator #{} creates its communicator #{} by {}, this \
                     rank its communicator #{index} by {}: every rank must create the same \
                     communicators in the same order",
                    self.index(),
                    d[0],
                    kind_name(d[1], d[2]),
                    kind.name()
                )));
            }
        }
        let raw = match kind {
            Kind::Dup | Kind::Cart { .. } => self.raw.duplicate(),
            Kind::Split { color, key } => {
                match self
                    .raw
                    .split_by_color_with_key(Color::with_value(color), key)
                {
                    Some(c) => c,
                    None => return Err(refuse("MPI gave no communicator".into())),
                }
            }
        };
        let mut members = vec![0i32; raw.size() as usize];
        raw.all_gather_into(&self.world_rank(), &mut members[..]);
        family.adopt(Comm::new(raw, self.family().clone(), index, members, grid))
    }

    /// Every rank's creation descriptor, over this communicator, under the timeout.
    fn gather_descriptors(&self, watch: &Watch, index: usize, mine: [u64; 4]) -> Vec<u64> {
        let mut all = vec![0u64; 4 * self.size() as usize];
        mpi::request::scope(|scope| {
            let req = self
                .raw
                .immediate_all_gather_into(scope, &mine[..], &mut all[..]);
            let first = self.members().first().copied().unwrap_or(0);
            let label = || {
                (
                    format!("create-comm-{index}-of-{}-w{first}", self.index()),
                    format!(
                        "the creation of communicator #{index} from communicator #{}",
                        self.index()
                    ),
                )
            };
            stall::wait_request(&self.raw, watch, label, req);
        });
        all
    }
}

/// A kind named from its descriptor, for messages.
fn kind_name(kind: u64, shape: u64) -> String {
    match kind {
        1 => "dup()".into(),
        2 => "split()".into(),
        3 => format!("cart() of {} dimensions (another shape)", shape >> 32),
        k => format!("an unknown kind {k}"),
    }
}
