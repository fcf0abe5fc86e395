//! When to checkpoint: every rank must decide the same at the same poll.
//!
//! A poll-count interval needs no communication (all ranks poll equally often). Anything that
//! differs between ranks (wall-clock time, signals, launcher requests) goes through a pipelined
//! agreement: at an agreement poll each rank completes the round it started at the previous
//! agreement poll, then starts the next one. Every rank completes round k at the same poll
//! count, so all of them act on it at the same poll, and no rank ever waits for the others at
//! a poll where they do not also wait (an application whose iteration i+1 needs a peer's
//! iteration i would deadlock otherwise).
//!
//! Rounds are not free: without an MPI progress thread a non-blocking reduction only advances
//! inside MPI calls, so completing one costs a few round trips (microseconds). Agreement polls
//! are therefore spaced by a *stride*, the number of polls in the gap to the next one, chosen
//! so that a gap lasts about `target` of wall time (default
//! [`AGREE_TARGET`](crate::config::AGREE_TARGET), 0.5 ms): each rank votes the number of polls
//! it made per `target` over the last gap, at most twice the current stride and at most
//! [`MAX_STRIDE`]; the round's result (the smallest vote) becomes the stride on every rank one
//! agreement poll later. A loop polling every microsecond pays a round every 500 polls; a loop
//! polling every 10 ms pays one per poll, a negligible share of its iteration. Between
//! agreement polls, a poll costs a counter increment and two comparisons: the clock is read
//! only at agreement polls.
//!
//! # Latency bound
//!
//! A request (signal, launcher request, time interval coming due) is read at the first
//! agreement poll after it arrives and acted on at the next one: it waits at most two gaps. A
//! gap of `s > 1` polls was voted by every rank, so each rank measured a mean poll interval of
//! at most `target / s` over the gap its vote covered; a gap of one poll lasts one iteration.
//! Hence, **if no poll interval after the request is longer than `t_max` and no earlier gap
//! had a mean poll interval shorter than `t_max / F` (the iterations grew at most `F` times),
//! the request is acted on within `2 * max(t_max, F * target)` of its arrival.** With the
//! default target, after a 1000x slowdown: within one second, or two iterations if one
//! iteration is longer than half a second. The bound holds however the slowdown falls
//! relative to agreement polls, and is tight: a slowdown right after an agreement poll leaves
//! two gaps voted at the old rate (unit-tested over a simulated clock). A launcher request
//! adds up to [`CONTROL_EVERY`](crate::trigger::CONTROL_EVERY), since rank 0 reads the control
//! file no more often than that. A fixed stride (`CKPT_AGREE_STRIDE=N`) waits at most `2N`
//! iterations instead.
//!
//! No bound can ignore `F`: a gap is fixed one round ahead and no rank can shorten it alone
//! (the others would not stop at the same poll), so a gap voted at the old rate lasts `F`
//! times longer after the slowdown. The target sets the trade: half the target, twice the
//! rounds, half the latency.
//!
//! The stride at most doubles per round, starting from 1 when the job starts or restarts, so
//! a gap is never more than four times as many polls as the gap whose rate voted it: one fast
//! iteration (a set-up step) cannot set a gap of hundreds of iterations that then run slow.
//!
//! # Exit
//!
//! An exit request ([`EXIT`], `ckpt checkpoint --then-exit`) asks for a checkpoint, then a
//! stop. When one is read at a poll that checkpoints anyway (for an earlier request or an
//! interval), the other ranks learn of it only one round later. If by then an epoch has
//! committed since the request was read (at or after the poll where that round started) and
//! no checkpoint was attempted since, all ranks stop without another checkpoint, and the job
//! resumes from that epoch. Otherwise (no such commit, or the last attempt failed) they
//! checkpoint, then stop.

use std::time::{Duration, Instant};

use crate::config::Interval;

/// Request bit: take a checkpoint.
pub const CHECKPOINT: u32 = 1;
/// Request bit: stop the application after the checkpoint.
pub const EXIT: u32 = 2;
/// How long after a failed checkpoint an agreed exit is voted again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Largest stride the adaptive mode chooses.
pub const MAX_STRIDE: u32 = 4096;
/// Most the adaptive stride grows in one round (factor).
pub const MAX_GROWTH: u32 = 2;

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
    /// About every `target` of wall time, from the ranks' poll rates (see the module's
    /// latency bound).
    Adaptive(Duration),
}

/// What all ranks decided at one poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    /// Checkpoint now.
    pub checkpoint: bool,
    /// Stop the application: after this poll's checkpoint if `checkpoint`, otherwise right away
    /// (the last checkpoint, committed since the exit request was read, stands for it).
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
    /// Poll count and time of the last agreement poll (where the round in flight started).
    last_round: Option<(u64, Instant)>,
    last_checkpoint: Instant,
    /// Poll count of the last committed checkpoint, if no checkpoint was attempted since.
    committed_at: Option<u64>,
    /// Request bits to vote again from a time on: an agreed exit whose checkpoint failed.
    retry: Option<(u32, Instant)>,
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
            committed_at: None,
            retry: None,
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
        self.committed_at = None;
    }

    /// One poll: what all ranks do now. `request` yields this rank's request bits and `now`
    /// the time; both are asked for only at agreement polls, so any other poll costs a
    /// counter increment and two comparisons. The caller reports the checkpoints it takes
    /// with [`Agreement::begin_checkpoint`] and [`Agreement::committed`].
    #[inline]
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
        self.agreement_poll(scheduled, now(), request, net)
    }

    /// An agreement poll: completes the round in flight, decides, starts the next round.
    /// Kept out of line so that the common poll above stays small enough to inline.
    #[inline(never)]
    fn agreement_poll(
        &mut self,
        scheduled: bool,
        now: Instant,
        request: impl FnOnce() -> u32,
        net: &mut impl VoteReduce,
    ) -> Decision {
        let agreed = net.finish(self.polls);
        if let Some(v) = agreed {
            self.stride = v.stride.clamp(1, MAX_STRIDE);
        }
        let bits = agreed.map_or(0, |v| v.bits);
        let exit = bits & EXIT != 0;
        // An exit needs no checkpoint of its own if one committed since its request was read
        // (at the poll where this round started, before that poll's checkpoint).
        let covered = matches!(
            (self.committed_at, self.last_round),
            (Some(c), Some((started, _))) if c >= started
        );
        let d = Decision {
            checkpoint: scheduled || (bits != 0 && !(exit && covered)),
            exit,
        };
        // The next round starts now. A plain request is satisfied by a checkpoint at this
        // poll; a request to exit is not (the others do not know of it yet), so it goes on,
        // and is covered by this checkpoint if it commits.
        let mut mine = request();
        if let Some((bits, _)) = self.retry.filter(|&(_, at)| now >= at) {
            mine |= bits;
            self.retry = None;
        }
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

    /// The stride this rank's poll rate calls for: the polls it made per `target` over the
    /// gap that ends now, at most [`MAX_GROWTH`] times the current stride.
    fn desired_stride(&self, now: Instant) -> u32 {
        match self.mode {
            Stride::Fixed(n) => n.max(1),
            Stride::Adaptive(target) => match self.last_round {
                None => 1,
                Some((polls, at)) => {
                    let secs = now.duration_since(at).as_secs_f64();
                    let rate = (self.polls - polls) as f64 / secs.max(1e-9);
                    let cap = self.stride.saturating_mul(MAX_GROWTH).min(MAX_STRIDE);
                    (target.as_secs_f64() * rate).clamp(1.0, cap as f64) as u32
                }
            },
        }
    }

    /// Restarts a time interval at `now`: after a restore (the state is safe on storage), or
    /// after a checkpoint that failed (so a lasting failure such as a full disk is not retried
    /// at every agreement round). Unlike [`Agreement::committed`], it covers no exit request.
    pub fn checkpointed(&mut self, now: Instant) {
        self.last_checkpoint = now;
    }

    /// Records that a checkpoint is being attempted: until [`Agreement::committed`] confirms
    /// it, an exit does not count on an earlier one.
    pub fn begin_checkpoint(&mut self) {
        self.committed_at = None;
    }

    /// Records that the checkpoint of decision `d` failed at `now` (the job goes on). An
    /// agreed exit is then voted again at the first agreement poll [`RETRY_AFTER`] later
    /// (every rank does the same, so it is agreed again): the job still stops, after a
    /// checkpoint that commits, and a storage that keeps failing costs one attempt a second.
    pub fn checkpoint_failed(&mut self, d: Decision, now: Instant) {
        if d.exit {
            self.retry = Some((CHECKPOINT | EXIT, now + RETRY_AFTER));
        }
    }

    /// Records that the checkpoint begun at this poll count committed at `now`.
    pub fn committed(&mut self, now: Instant) {
        self.last_checkpoint = now;
        self.committed_at = Some(self.polls);
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

    /// Ranks polled in lockstep over a simulated clock: each poll, every rank's clock advances
    /// by the poll's duration, then the rank polls.
    struct Sim {
        t0: Instant,
        ranks: Vec<(Agreement, SimReduce)>,
        clock: Duration,
        /// Request bits raised on each rank and not yet taken by an agreement poll.
        pending: Vec<u32>,
        /// Every rank's checkpoints commit unless this is set.
        fail: bool,
    }

    impl Sim {
        fn new(n: usize, every: Interval, mode: Stride) -> Sim {
            let t0 = Instant::now();
            let shared = Rc::new(RefCell::new(Rounds::default()));
            Sim {
                t0,
                ranks: (0..n)
                    .map(|_| {
                        (
                            Agreement::new(every, mode, true, t0),
                            SimReduce::new(&shared),
                        )
                    })
                    .collect(),
                clock: Duration::ZERO,
                pending: vec![0; n],
                fail: false,
            }
        }

        /// One poll on every rank after `dt` of work; returns the (common) decision.
        fn poll(&mut self, dt: Duration) -> Decision {
            self.clock += dt;
            let now = self.t0 + self.clock;
            let mut out = Vec::new();
            for (r, (a, net)) in self.ranks.iter_mut().enumerate() {
                let pending = &mut self.pending[r];
                let d = a.on_poll(|| now, || std::mem::take(pending), net);
                if d.checkpoint {
                    a.begin_checkpoint();
                    if self.fail {
                        a.checkpoint_failed(d, now);
                    } else {
                        a.committed(now);
                    }
                }
                out.push(d);
            }
            assert!(
                out.windows(2).all(|w| w[0] == w[1]),
                "ranks disagree: {out:?}"
            );
            out[0]
        }

        /// A checkpoint the application takes between polls (`Checkpointer::checkpoint`).
        fn explicit_checkpoint(&mut self, commits: bool) {
            let now = self.t0 + self.clock;
            for (a, _) in &mut self.ranks {
                a.begin_checkpoint();
                if commits {
                    a.committed(now);
                }
            }
        }
    }

    /// Worst simulated time from a request to the poll that checkpoints for it, over
    /// placements of a sudden slowdown: `fast` per poll for `warm + k` polls (k in
    /// `(0..sweep).step_by(step)`), then `fast * factor` per poll, the request (to rank 1)
    /// arriving at the slowdown. A sweep over a whole gap with step 1 includes the worst
    /// placement: the slowdown and the request right after an agreement poll.
    fn worst_latency(
        mode: Stride,
        fast: Duration,
        factor: u32,
        warm: u64,
        (sweep, step): (u64, usize),
    ) -> Duration {
        let slow = fast * factor;
        (0..sweep)
            .step_by(step)
            .map(|k| {
                let mut sim = Sim::new(2, Interval::Off, mode);
                for _ in 0..warm + k {
                    assert!(!sim.poll(fast).checkpoint);
                }
                let asked = sim.clock;
                sim.pending[1] |= CHECKPOINT;
                loop {
                    if sim.poll(slow).checkpoint {
                        break sim.clock - asked;
                    }
                    assert!(
                        sim.clock - asked < Duration::from_secs(600),
                        "never acted on"
                    );
                }
            })
            .max()
            .unwrap()
    }

    #[test]
    fn a_request_after_a_1000x_slowdown_is_acted_on_within_a_second() {
        // 1 us per poll long enough to reach the largest stride, then 1 ms per poll.
        let mode = Stride::Adaptive(crate::config::AGREE_TARGET);
        let worst = worst_latency(mode, Duration::from_micros(1), 1000, 3000, (1100, 1));
        assert!(
            worst <= Duration::from_secs(1),
            "acted on {worst:?} after the request"
        );
        // The sweep does hit the stale stride (a bound that nothing approaches proves nothing).
        assert!(worst > Duration::from_millis(500), "worst case {worst:?}");
    }

    #[test]
    fn the_latency_bound_holds_from_the_largest_stride_to_one_poll() {
        // (fast poll, slowdown factor, warm-up polls, sweep): the stride capped at MAX_STRIDE,
        // an ordinary stride, and iterations longer than the target (stride 1).
        let target = crate::config::AGREE_TARGET;
        let cases = [
            (Duration::from_nanos(100), 1000, 9000, (4100, 41)),
            (Duration::from_micros(20), 100, 300, (30, 1)),
            (Duration::from_millis(2), 1000, 10, (3, 1)),
        ];
        for (fast, factor, warm, sweep) in cases {
            let worst = worst_latency(Stride::Adaptive(target), fast, factor, warm, sweep);
            let bound = 2 * (fast * factor).max(target * factor);
            assert!(
                worst <= bound,
                "{fast:?} x {factor}: acted on after {worst:?}, bound {bound:?}"
            );
        }
    }

    #[test]
    fn a_short_fast_set_up_does_not_set_a_long_gap() {
        // Up to 64 polls of 1 us, then 10 ms per poll (10000x): the stride has had no time
        // to grow, so the request waits a few slow polls, not a stride measured over one
        // fast poll.
        let mode = Stride::Adaptive(crate::config::AGREE_TARGET);
        let worst = worst_latency(mode, Duration::from_micros(1), 10_000, 2, (63, 1));
        assert!(
            worst <= Duration::from_secs(1),
            "acted on {worst:?} after the request"
        );
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
                    a.begin_checkpoint();
                    a.committed(now);
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
    fn an_exit_request_seen_at_a_scheduled_checkpoint_costs_no_second_one() {
        // Polls(2) checkpoints at poll 2; the exit request read at poll 2 is agreed at poll 3,
        // where the epoch committed at poll 2 (after the request was read) stands for it.
        let d = lockstep(
            1,
            3,
            Interval::Polls(2),
            Stride::Fixed(1),
            |_| Duration::ZERO,
            |_, p| if p == 2 { CHECKPOINT | EXIT } else { 0 },
        );
        let ckpt = Decision {
            checkpoint: true,
            exit: false,
        };
        let stop = Decision {
            checkpoint: false,
            exit: true,
        };
        assert_eq!(d[0], [Decision::default(), ckpt, stop]);
    }

    /// Two ranks, a round every 4 polls: rank 0 asks for a checkpoint before poll 4 (agreed
    /// at poll 8), rank 1 for a checkpoint and exit just before poll 8 (read there, agreed at
    /// poll 12). Returns the polls that checkpoint and the decision at poll 12.
    fn exit_during_a_checkpoint(commit_fails: bool) -> (Vec<u64>, Decision) {
        let mut sim = Sim::new(2, Interval::Off, Stride::Fixed(4));
        let mut at = Vec::new();
        let mut last = Decision::default();
        for p in 1..=12 {
            match p {
                4 => sim.pending[0] |= CHECKPOINT,
                8 => sim.pending[1] |= CHECKPOINT | EXIT,
                _ => {}
            }
            sim.fail = commit_fails && p == 8;
            last = sim.poll(Duration::from_millis(1));
            if last.checkpoint {
                at.push(p);
            }
            assert!(!last.exit || p == 12, "exit at poll {p}");
        }
        (at, last)
    }

    #[test]
    fn an_exit_request_during_an_agreed_checkpoint_costs_one_checkpoint() {
        let (at, last) = exit_during_a_checkpoint(false);
        assert_eq!(at, [8]);
        assert_eq!(
            last,
            Decision {
                checkpoint: false,
                exit: true
            }
        );
    }

    #[test]
    fn an_exit_after_a_failed_checkpoint_still_checkpoints() {
        let (at, last) = exit_during_a_checkpoint(true);
        assert_eq!(at, [8, 12]);
        assert_eq!(
            last,
            Decision {
                checkpoint: true,
                exit: true
            }
        );
        // The exit is read at poll 4 and agreed at poll 8; the application checkpoints after
        // poll 5 (committed: it covers the exit) and again after poll 6. If that attempt
        // fails, the exit checkpoints.
        for second_commits in [true, false] {
            let mut sim = Sim::new(1, Interval::Off, Stride::Fixed(4));
            sim.pending[0] |= CHECKPOINT | EXIT;
            let mut last = Decision::default();
            for p in 1..=8 {
                last = sim.poll(Duration::from_millis(1));
                match p {
                    5 => sim.explicit_checkpoint(true),
                    6 => sim.explicit_checkpoint(second_commits),
                    _ => {}
                }
            }
            let want = Decision {
                checkpoint: !second_commits,
                exit: true,
            };
            assert_eq!(last, want, "second checkpoint commits: {second_commits}");
        }
    }

    #[test]
    fn an_exit_whose_checkpoint_fails_is_agreed_again_a_second_later() {
        // 100 ms per poll, a round every 4 polls. The exit is read at poll 4 and agreed at
        // poll 8, where its checkpoint fails (a full disk, say; the job goes on), and so does
        // the next attempt: each is voted again at the first agreement poll a second later
        // (polls 20 and 36) and agreed one round after (24, 40), where it commits.
        let mut sim = Sim::new(2, Interval::Off, Stride::Fixed(4));
        sim.pending[1] |= EXIT;
        let mut exits = Vec::new();
        for p in 1..=40 {
            sim.fail = p == 8 || p == 24;
            let d = sim.poll(Duration::from_millis(100));
            if d.exit {
                exits.push((p, d.checkpoint));
            }
        }
        assert_eq!(exits, vec![(8, true), (24, true), (40, true)]);
    }

    #[test]
    fn an_exit_without_a_recent_commit_checkpoints_first() {
        // The exit is read at poll 4, agreed at poll 8; the commit at poll 2 predates the
        // request, so the exit takes its own checkpoint.
        let mut sim = Sim::new(1, Interval::Polls(2), Stride::Fixed(4));
        let d: Vec<Decision> = (1..=8)
            .map(|p| {
                if p == 3 {
                    sim.pending[0] |= CHECKPOINT | EXIT;
                }
                sim.poll(Duration::from_millis(1))
            })
            .collect();
        assert_eq!(
            d[7],
            Decision {
                checkpoint: true,
                exit: true
            }
        );
        // A scheduled commit between the read (poll 4) and the agreement would have covered
        // it: with Polls(3) the epoch of poll 6 stands for the exit agreed at poll 8.
        let mut sim = Sim::new(1, Interval::Polls(3), Stride::Fixed(4));
        let d: Vec<Decision> = (1..=8)
            .map(|p| {
                if p == 3 {
                    sim.pending[0] |= CHECKPOINT | EXIT;
                }
                sim.poll(Duration::from_millis(1))
            })
            .collect();
        assert_eq!(
            d[7],
            Decision {
                checkpoint: false,
                exit: true
            }
        );
    }
}
