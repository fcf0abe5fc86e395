//! When to checkpoint: every rank must decide the same at the same poll.
//!
//! A poll-count interval needs no communication (all ranks poll equally often). Anything that
//! differs between ranks (wall-clock time now; signals and launcher requests later) goes through
//! a pipelined agreement: every `stride` polls each rank completes the flag reduction it started
//! at the previous agreement poll, then starts the next one. The reduction has had a whole
//! iteration to finish, so completing it costs next to nothing, and since every rank completes
//! round k at the same poll count, all of them checkpoint at the same poll.

use std::time::{Duration, Instant};

use crate::config::Interval;

/// Request bit: take a checkpoint.
pub const CHECKPOINT: u32 = 1;
/// Request bit: stop the application after the checkpoint.
pub const EXIT: u32 = 2;

/// A bitwise-or reduction of request bits over all ranks, at most one round in flight.
pub trait FlagReduce {
    /// Starts a round with this rank's bits.
    fn start(&mut self, bits: u32);
    /// Completes the round in flight, if any, and returns the or of all ranks' bits.
    fn finish(&mut self) -> Option<u32>;
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
    stride: u64,
    pipelined: bool,
    polls: u64,
    last_checkpoint: Instant,
}

impl Agreement {
    /// A schedule for `every`, with agreement rounds every `stride` polls. Rounds run when the
    /// interval is time-based or when `requests` says that checkpoint requests (signals, the
    /// launcher) can arrive; this must be the same on every rank, since rounds are collective.
    pub fn new(every: Interval, stride: u64, requests: bool, now: Instant) -> Self {
        Agreement {
            every,
            stride: stride.max(1),
            pipelined: requests || matches!(every, Interval::Time(_)),
            polls: 0,
            last_checkpoint: now,
        }
    }

    /// Polls made so far.
    pub fn polls(&self) -> u64 {
        self.polls
    }

    /// Continues counting from `polls` (after a restore).
    pub fn resume_at(&mut self, polls: u64) {
        self.polls = polls;
    }

    /// Whether this poll number runs an agreement round.
    fn agreement_poll(&self) -> bool {
        self.pipelined && self.polls % self.stride == 0
    }

    /// One poll: what all ranks do now. `request` yields this rank's request bits
    /// ([`CHECKPOINT`], [`EXIT`]) and `now` the time; both are asked for only at agreement
    /// polls, so a poll between rounds costs a counter increment and a comparison.
    pub fn on_poll(
        &mut self,
        now: impl FnOnce() -> Instant,
        request: impl FnOnce() -> u32,
        net: &mut impl FlagReduce,
    ) -> Decision {
        self.polls += 1;
        let scheduled = matches!(self.every, Interval::Polls(n) if n > 0 && self.polls % n == 0);
        if !self.agreement_poll() {
            return Decision {
                checkpoint: scheduled,
                exit: false,
            };
        }
        let agreed = net.finish().unwrap_or(0);
        let d = Decision {
            checkpoint: scheduled || agreed & CHECKPOINT != 0,
            exit: agreed & EXIT != 0,
        };
        // The next round starts now. A plain request is satisfied by a checkpoint at this
        // poll; a request to exit is not (the others do not know of it yet), so it goes on.
        let mut bits = request();
        if self.due(now()) {
            bits |= CHECKPOINT;
        }
        if d.checkpoint && bits & EXIT == 0 {
            bits = 0;
        }
        net.start(bits);
        d
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

    /// An in-process reduction for `n` ranks polled in lockstep: round k's result is the or of
    /// the flags all ranks started in round k.
    #[derive(Default)]
    struct Rounds {
        started: Vec<Vec<u32>>, // per round, bits in start order
    }
    struct SimReduce {
        me: usize,
        round: usize,
        in_flight: bool,
        shared: Rc<RefCell<Rounds>>,
    }
    impl FlagReduce for SimReduce {
        fn start(&mut self, flag: u32) {
            let mut s = self.shared.borrow_mut();
            if s.started.len() <= self.round {
                s.started.push(Vec::new());
            }
            s.started[self.round].push(flag);
            let _ = self.me;
            self.in_flight = true;
        }
        fn finish(&mut self) -> Option<u32> {
            if !self.in_flight {
                return None;
            }
            self.in_flight = false;
            let r = self.shared.borrow().started[self.round]
                .iter()
                .fold(0, |a, b| a | b);
            self.round += 1;
            Some(r)
        }
    }

    #[test]
    fn poll_interval_needs_no_rounds() {
        let t = Instant::now();
        let mut a = Agreement::new(Interval::Polls(3), 1, false, t);
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut net = SimReduce {
            me: 0,
            round: 0,
            in_flight: false,
            shared: shared.clone(),
        };
        let hits: Vec<bool> = (0..7)
            .map(|_| a.on_poll(|| t, || 0, &mut net).checkpoint)
            .collect();
        assert_eq!(hits, [false, false, true, false, false, true, false]);
        assert!(shared.borrow().started.is_empty());
    }

    #[test]
    fn ranks_with_skewed_clocks_checkpoint_at_the_same_poll() {
        // Rank 1's time runs ahead: it alone finds the interval elapsed at poll 4.
        let t0 = Instant::now();
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut ranks: Vec<(Agreement, SimReduce)> = (0..3)
            .map(|me| {
                (
                    Agreement::new(Interval::Time(Duration::from_secs(10)), 2, false, t0),
                    SimReduce {
                        me,
                        round: 0,
                        in_flight: false,
                        shared: shared.clone(),
                    },
                )
            })
            .collect();
        let mut decisions = vec![Vec::new(); 3];
        for poll in 1..=12u64 {
            for (me, (a, net)) in ranks.iter_mut().enumerate() {
                let skew = if me == 1 { 6 } else { 0 };
                let now = t0 + Duration::from_secs(poll + skew);
                let go = a.on_poll(|| now, || 0, net).checkpoint;
                if go {
                    a.checkpointed(now);
                }
                decisions[me].push(go);
            }
        }
        assert_eq!(decisions[0], decisions[1]);
        assert_eq!(decisions[1], decisions[2]);
        let first = decisions[0].iter().position(|d| *d).map(|i| i + 1);
        // Rank 1 sees 10 s elapsed at poll 4 (an agreement poll with stride 2): the round
        // started there completes at poll 6, where everyone checkpoints.
        assert_eq!(first, Some(6));
    }

    #[test]
    fn a_request_is_agreed_even_with_interval_off() {
        let t = Instant::now();
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut a = Agreement::new(Interval::Off, 1, true, t);
        let mut net = SimReduce {
            me: 0,
            round: 0,
            in_flight: false,
            shared,
        };
        let mut poll = |a: &mut Agreement, bits: u32| a.on_poll(|| t, || bits, &mut net);
        assert_eq!(poll(&mut a, 0), Decision::default());
        assert_eq!(poll(&mut a, CHECKPOINT), Decision::default());
        assert_eq!(
            poll(&mut a, 0),
            Decision {
                checkpoint: true,
                exit: false
            }
        );
        assert_eq!(poll(&mut a, 0), Decision::default());
    }

    #[test]
    fn an_exit_request_survives_a_scheduled_checkpoint() {
        // Polls(2) checkpoints at poll 2; the exit request made at poll 2 must still be
        // agreed (at poll 3), not swallowed by the scheduled checkpoint.
        let t = Instant::now();
        let shared = Rc::new(RefCell::new(Rounds::default()));
        let mut a = Agreement::new(Interval::Polls(2), 1, true, t);
        let mut net = SimReduce {
            me: 0,
            round: 0,
            in_flight: false,
            shared,
        };
        let mut poll = |a: &mut Agreement, bits: u32| a.on_poll(|| t, || bits, &mut net);
        assert_eq!(poll(&mut a, 0), Decision::default());
        assert_eq!(
            poll(&mut a, CHECKPOINT | EXIT),
            Decision {
                checkpoint: true,
                exit: false
            }
        );
        assert_eq!(
            poll(&mut a, 0),
            Decision {
                checkpoint: true,
                exit: true
            }
        );
    }
}
