//! When to checkpoint: every rank must decide the same at the same poll.
//!
//! A poll-count interval needs no communication (all ranks poll equally often). Anything that
//! differs between ranks (wall-clock time, signals, launcher requests) goes through a pipelined
//! agreement: at an agreement poll each rank completes the round it started at the previous
//! agreement poll, then starts the next one. Every rank completes round k at the same poll
//! count, so all of them act on it at the same poll.
//!
//! Rounds are not free: without an MPI progress thread a non-blocking reduction only advances
//! inside MPI calls, so completing one costs a few round trips (microseconds). Agreement polls
//! are therefore spaced by a *stride* chosen so that rounds happen about every `target` of
//! wall time: each rank votes the stride its own poll rate calls for, and the round's result
//! (the smallest vote) is the next stride, identical on every rank. A loop polling every
//! microsecond pays a round every thousand polls; a loop polling every 10 ms pays one per
//! poll, a negligible share of its iteration. A request is acted on within about two rounds.

use std::time::{Duration, Instant};

use crate::config::Interval;

/// Request bit: take a checkpoint.
pub const CHECKPOINT: u32 = 1;
/// Request bit: stop the application after the checkpoint.
pub const EXIT: u32 = 2;
/// Largest stride the adaptive mode chooses.
pub const MAX_STRIDE: u32 = 4096;

/// One rank's contribution to a round, and (merged) the round's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// Request bits ([`CHECKPOINT`], [`EXIT`]); merged by union.
    pub bits: u32,
    /// Polls until the next agreement poll; merged by minimum.
    pub stride: u32,
}

impl Vote {
    /// Merges two votes: union of the request bits, smallest stride.
    pub fn merge(self, other: Vote) -> Vote {
        Vote {
            bits: self.bits | other.bits,
            stride: self.stride.min(other.stride),
        }
    }

    /// Encoding for an element-wise `MPI_MAX` reduction: `[checkpoint, exit, !stride]`
    /// (max of 0/1 flags is their union; max of the complement is the minimum).
    pub fn to_words(self) -> [u32; 3] {
        [
            u32::from(self.bits & CHECKPOINT != 0),
            u32::from(self.bits & EXIT != 0),
            !self.stride,
        ]
    }

    /// Decodes [`Vote::to_words`].
    pub fn from_words(w: [u32; 3]) -> Vote {
        Vote {
            bits: if w[0] != 0 { CHECKPOINT } else { 0 } | if w[1] != 0 { EXIT } else { 0 },
            stride: !w[2],
        }
    }
}

/// A reduction of [`Vote`]s over all ranks, at most one round in flight.
pub trait VoteReduce {
    /// Starts a round with this rank's vote.
    fn start(&mut self, vote: Vote);
    /// Completes the round in flight, if any, and returns the merged vote of all ranks.
    /// `poll` is the poll at which this happens, for diagnostics.
    fn finish(&mut self, poll: u64) -> Option<Vote>;
}

/// How agreement polls are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stride {
    /// Every N polls.
    Fixed(u32),
    /// About every `target` of wall time, from the ranks' poll rates.
    Adaptive(Duration),
}

/// What all ranks decided at one poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Checkpoint now.
    pub checkpoint: bool,
    /// Stop the application after this checkpoint.
    pub exit: bool,
}

/// The per-rank agreement state machine.
#[derive(Debug, Clone)]
pub struct Agreement {
    every: Interval,
    mode: Stride,
    pipelined: bool,
    polls: u64,
    stride: u32,
    next_round: u64,
    last_round: Option<(u64, Instant)>,
    last_checkpoint: Instant,
}

impl Agreement {
    /// A schedule for `every` with agreement polls spaced by `mode`. Rounds run when the
    /// interval is time-based or when `requests` says that checkpoint requests (signals, the
    /// launcher) can arrive; this must be the same on every rank, since rounds are collective.
    pub fn new(every: Interval, mode: Stride, requests: bool, now: Instant) -> Self {
        let stride = match mode {
            Stride::Fixed(n) => n.max(1),
            Stride::Adaptive(_) => 1,
        };
        Agreement {
            every,
            mode,
            pipelined: requests || matches!(every, Interval::Time(_)),
            polls: 0,
            stride,
            next_round: stride as u64,
            last_round: None,
            last_checkpoint: now,
        }
    }

    /// Polls made so far.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// The current stride between agreement polls.
    pub fn stride(&self) -> u32 {
        self.stride
    }

    /// Continues counting from `polls` (after a restore; every rank restores the same count).
    pub fn resume_at(&mut self, polls: u64) {
        self.polls = polls;
        self.next_round = polls + self.stride as u64;
        self.last_round = None;
    }

    /// One poll: what all ranks do now. `request` yields this rank's request bits and `now`
    /// the time; both are asked for only at agreement polls, so any other poll costs a
    /// counter increment and two comparisons.
    pub fn on_poll(
        &mut self,
        now: impl FnOnce() -> Instant,
        request: impl FnOnce() -> u32,
        net: &mut impl VoteReduce,
    ) -> Decision {
        self.polls += 1;
        let scheduled = matches!(self.every, Interval::Polls(n) if n > 0 && self.polls % n == 0);
        if !self.pipelined || self.polls < self.next_round {
            return Decision {
                checkpoint: scheduled,
                exit: false,
            };
        }
        let now = now();
        let agreed = net.finish(self.polls);
        if let Some(v) = agreed {
            self.stride = v.stride.clamp(1, MAX_STRIDE);
        }
        let bits = agreed.map_or(0, |v| v.bits);
        let d = Decision {
            checkpoint: scheduled || bits & CHECKPOINT != 0,
            exit: bits & EXIT != 0,
        };
        // The next round starts now. A plain request is satisfied by a checkpoint at this
        // poll; a request to exit is not (the others do not know of it yet), so it goes on.
        let mut mine = request();
        if self.due(now) {
            mine |= CHECKPOINT;
        }
        if d.checkpoint && mine & EXIT == 0 {
            mine = 0;
        }
        net.start(Vote {
            bits: mine,
            stride: self.desired_stride(now),
        });
        self.last_round = Some((self.polls, now));
        self.next_round = self.polls + self.stride as u64;
        d
    }

    /// The stride this rank's poll rate calls for.
    fn desired_stride(&self, now: Instant) -> u32 {
        match self.mode {
            Stride::Fixed(n) => n.max(1),
            Stride::Adaptive(target) => match self.last_round {
                None => 1,
                Some((polls, at)) => {
                    let secs = now.duration_since(at).as_secs_f64();
                    let rate = (self.polls - polls) as f64 / secs.max(1e-9);
                    (target.as_secs_f64() * rate).clamp(1.0, MAX_STRIDE as f64) as u32
                }
            },
        }
    }

    /// Records that a checkpoint was taken at `now`.
    pub fn checkpointed(&mut self, now: Instant) {
        self.last_checkpoint = now;
    }

    fn due(&self, now: Instant) -> bool {
        match self.every {
            Interval::Time(d) => now.duration_since(self.last_checkpoint) >= d,
            _ => false,
        }
    }

    /// Time since the last checkpoint.
    pub fn since_checkpoint(&self, now: Instant) -> Duration {
        now.duration_since(self.last_checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// An in-process reduction for ranks polled in lockstep: round k's result merges the votes
    /// all ranks started in round k.
    #[derive(Default)]
    struct Rounds {
        started: Vec<Vec<Vote>>,
    }
    struct SimReduce {
        round: usize,
        in_flight: bool,
        shared: Rc<RefCell<Rounds>>,
    }
    impl SimReduce {
        fn new(shared: &Rc<RefCell<Rounds>>) -> Self {
            SimReduce {
                round: 0,
                in_flight: false,
                shared: shared.clone(),
            }
        }
    }
    impl VoteReduce for SimReduce {
        fn start(&mut self, v: Vote) {
            let mut s = self.shared.borrow_mut();
            if s.started.len() <= self.round {
                s.started.push(Vec::new());
            }
            s.started[self.round].push(v);
            self.in_flight = true;
        }
        fn finish(&mut self, _poll: u64) -> Option<Vote> {
            if !self.in_flight {
                return None;
            }
            self.in_flight = false;
            let s = self.shared.borrow();
            let r = s.started[self.round].iter().copied().reduce(Vote::merge);
            self.round += 1;
            r
        }
    }

    #[test]
    fn vote_encoding_reduces_with_max() {
        let votes = [
            Vote {
                bits: CHECKPOINT,
                stride: 40,
            },
            Vote { bits: 0, stride: 7 },
            Vote {
                bits: EXIT | CHECKPOINT,
                stride: 4096,
            },
        ];
        let mut max = [0u32; 3];
        for v in votes {
            for (m, w) in max.iter_mut().zip(v.to_words()) {
                *m = (*m).max(w);
            }
        }
        let merged = votes.into_iter().reduce(Vote::merge).unwrap();
        assert_eq!(Vote::from_words(max), merged);
        assert_eq!(
            merged,
            Vote {
                bits: CHECKPOINT | EXIT,
                stride: 7
            }
        );
    }

    #[test]
    fn poll_interval_without_requests_needs_no_rounds() {
        let t = Instant::now();
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut a = Agreement::new(Interval::Polls(3), Stride::Fixed(1), false, t);
        let mut net = SimReduce::new(&shared);
        let hits: Vec<bool> = (0..7)
            .map(|_| a.on_poll(|| t, || 0, &mut net).checkpoint)
            .collect();
        assert_eq!(hits, [false, false, true, false, false, true, false]);
        assert!(shared.borrow().started.is_empty());
    }

    /// Runs `n` ranks in lockstep for `polls` polls; rank `r`'s clock at poll `p` is
    /// `t0 + p * tick(r)` and it raises the requests `request(r, p)` says, which stay pending
    /// until an agreement poll takes them. Returns each rank's decisions.
    fn lockstep(
        n: usize,
        polls: u64,
        every: Interval,
        mode: Stride,
        tick: impl Fn(usize) -> Duration,
        request: impl Fn(usize, u64) -> u32,
    ) -> Vec<Vec<Decision>> {
        let t0 = Instant::now();
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut ranks: Vec<(Agreement, SimReduce)> = (0..n)
            .map(|_| {
                (
                    Agreement::new(every, mode, true, t0),
                    SimReduce::new(&shared),
                )
            })
            .collect();
        let mut out = vec![Vec::new(); n];
        // Requests stay pending until an agreement poll takes them, as with a signal flag.
        let mut pending = vec![0u32; n];
        for p in 1..=polls {
            for (r, (a, net)) in ranks.iter_mut().enumerate() {
                let now = t0 + tick(r) * p as u32;
                pending[r] |= request(r, p);
                let d = a.on_poll(|| now, || std::mem::take(&mut pending[r]), net);
                if d.checkpoint {
                    a.checkpointed(now);
                }
                out[r].push(d);
            }
        }
        out
    }

    #[test]
    fn ranks_with_skewed_clocks_checkpoint_at_the_same_poll() {
        // Rank 1's clock runs ahead; it alone finds 10 s elapsed first.
        let d = lockstep(
            3,
            12,
            Interval::Time(Duration::from_secs(10)),
            Stride::Fixed(2),
            |r| Duration::from_secs(if r == 1 { 2 } else { 1 }),
            |_, _| 0,
        );
        assert!(d.windows(2).all(|w| w[0] == w[1]));
        let first = d[0].iter().position(|x| x.checkpoint).map(|i| i + 1);
        // Rank 1 sees 10 s at poll 6 (an agreement poll with stride 2); the round started
        // there completes at poll 8, where everyone checkpoints.
        assert_eq!(first, Some(8));
    }

    #[test]
    fn adaptive_stride_follows_the_slowest_rank_and_stays_in_step() {
        // Rank 0 polls every 10 us, rank 1 every 100 us (in lockstep the clocks just differ):
        // with a 1 ms target, rank 1 asks for 10 and rank 0 for 100; the stride becomes 10.
        let polls = 400;
        let d = lockstep(
            2,
            polls,
            Interval::Off,
            Stride::Adaptive(Duration::from_millis(1)),
            |r| Duration::from_micros(if r == 0 { 10 } else { 100 }),
            |r, p| if r == 1 && p == 300 { CHECKPOINT } else { 0 },
        );
        assert_eq!(d[0], d[1]);
        let at: Vec<usize> = d[0]
            .iter()
            .enumerate()
            .filter(|(_, x)| x.checkpoint)
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(at.len(), 1, "one checkpoint for one request: {at:?}");
        // Requested at poll 300, acted on within two strides of 10 polls.
        assert!((301..=321).contains(&at[0]), "acted on at {at:?}");
    }

    #[test]
    fn a_request_is_agreed_even_with_interval_off() {
        let d = lockstep(
            2,
            4,
            Interval::Off,
            Stride::Fixed(1),
            |_| Duration::ZERO,
            |r, p| {
                if r == 1 && p == 2 {
                    CHECKPOINT
                } else {
                    0
                }
            },
        );
        let ck: Vec<bool> = d[0].iter().map(|x| x.checkpoint).collect();
        assert_eq!(ck, [false, false, true, false]);
        assert_eq!(d[0], d[1]);
    }

    #[test]
    fn an_exit_request_survives_a_scheduled_checkpoint() {
        // Polls(2) checkpoints at poll 2; the exit request made at poll 2 must still be
        // agreed (at poll 3), not swallowed by the scheduled checkpoint.
        let d = lockstep(
            1,
            3,
            Interval::Polls(2),
            Stride::Fixed(1),
            |_| Duration::ZERO,
            |_, p| {
                if p == 2 {
                    CHECKPOINT | EXIT
                } else {
                    0
                }
            },
        );
        assert_eq!(
            d[0],
            [
                Decision::default(),
                Decision {
                    checkpoint: true,
                    exit: false
                },
                Decision {
                    checkpoint: true,
                    exit: true
                }
            ]
        );
    }
}
