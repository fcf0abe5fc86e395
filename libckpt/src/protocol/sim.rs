//! A seeded, in-process simulation of quiescence, with no MPI: ranks run a generated program
//! of sends and receives (with wildcard sources and tags) over a simulated network with random
//! delays; checkpoints drain in-flight messages with the real [`Counters`], [`drain_plan`] and
//! [`MessageLog`] (encoded and decoded as in a snapshot); crashes throw away everything since
//! the last checkpoint, including messages on the wire, and the program re-executes from it.
//!
//! Checked on every seed: after each drain the network holds nothing sent before the
//! checkpoint and the plan never fails; in the surviving execution every message sent to a
//! rank is received exactly once, and messages from one sender with one tag arrive in the
//! order they were sent (MPI's non-overtaking rule).
//!
//! `CKPT_SIM_SEEDS=N` runs N seeds (default 300); `CKPT_SIM_SEED=S` replays one seed.

use std::collections::VecDeque;

use super::quiesce::{drain_plan, Counters, Logged, MessageLog, Source, TagSel};

/// SplitMix64: small, seedable, good enough to draw schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How a rank selects messages in all its receives. Mixing modes within one rank could make
/// a wildcard receive steal the message a later specific receive needs (a real deadlock in the
/// application, not the library's), so each rank keeps one mode.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Exact,
    AnySource,
    AnyTag,
    AnyAny,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Send message `id` (its source, destination and tag are in the message table).
    Send(usize),
    /// Receive one message with these selectors.
    Recv(Source, TagSel),
    /// End of a round: a poll, where a checkpoint may happen.
    Poll,
}

#[derive(Debug, Clone, Copy)]
struct MsgSpec {
    src: usize,
    dst: usize,
    tag: i32,
}

/// The generated program of every rank.
struct Program {
    msgs: Vec<MsgSpec>,
    ops: Vec<Vec<Op>>,
}

fn generate(rng: &mut Rng, n: usize) -> Program {
    let rounds = 4 + rng.below(10) as usize;
    let lag = rng.below(3) as usize;
    let modes: Vec<Mode> = (0..n)
        .map(|_| [Mode::Exact, Mode::AnySource, Mode::AnyTag, Mode::AnyAny][rng.below(4) as usize])
        .collect();
    let mut msgs = Vec::new();
    let mut by_round: Vec<Vec<usize>> = Vec::new();
    let mut ops = vec![Vec::new(); n];
    for round in 0..rounds + lag {
        let mut sent = Vec::new();
        if round < rounds {
            for _ in 0..rng.below(3 * n as u64 + 1) {
                let src = rng.below(n as u64) as usize;
                let dst = (src + 1 + rng.below(n as u64 - 1) as usize) % n;
                let id = msgs.len();
                msgs.push(MsgSpec {
                    src,
                    dst,
                    tag: rng.below(3) as i32,
                });
                ops[src].push(Op::Send(id));
                sent.push(id);
            }
        }
        by_round.push(sent);
        // Receive what was sent `lag` rounds ago.
        if round >= lag {
            for &id in &by_round[round - lag] {
                let m = msgs[id];
                let (s, t) = match modes[m.dst] {
                    Mode::Exact => (Source::Rank(m.src as i32), TagSel::Tag(m.tag)),
                    Mode::AnySource => (Source::Any, TagSel::Tag(m.tag)),
                    Mode::AnyTag => (Source::Rank(m.src as i32), TagSel::Any),
                    Mode::AnyAny => (Source::Any, TagSel::Any),
                };
                ops[m.dst].push(Op::Recv(s, t));
            }
        }
        for o in ops.iter_mut() {
            o.push(Op::Poll);
        }
    }
    Program { msgs, ops }
}

#[derive(Debug, Clone)]
struct InFlight {
    id: usize,
    tag: i32,
    arrive_at: u64,
}

/// One rank's state: what a snapshot holds (program counter, received ids, message log).
#[derive(Debug, Clone)]
struct RankState {
    pc: usize,
    received: Vec<usize>,
    counters: Counters,
    log: MessageLog,
}

struct World<'p> {
    prog: &'p Program,
    n: usize,
    /// `wire[src][dst]`: messages in send order.
    wire: Vec<Vec<VecDeque<InFlight>>>,
    ranks: Vec<RankState>,
    tick: u64,
}

impl<'p> World<'p> {
    fn new(prog: &'p Program, n: usize) -> Self {
        World {
            prog,
            n,
            wire: vec![vec![VecDeque::new(); n]; n],
            ranks: (0..n)
                .map(|_| RankState {
                    pc: 0,
                    received: Vec::new(),
                    counters: Counters::new(n),
                    log: MessageLog::default(),
                })
                .collect(),
            tick: 0,
        }
    }

    /// The message a receive on `dst` takes from the wire, if one has arrived: per sender,
    /// the first message in send order that matches (a later match may not overtake it);
    /// among senders, the one that arrived first.
    fn wire_match(&self, dst: usize, s: Source, t: TagSel) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for src in 0..self.n {
            if let Source::Rank(r) = s {
                if r as usize != src {
                    continue;
                }
            }
            let first = self.wire[src][dst]
                .iter()
                .find(|m| matches!(t, TagSel::Any) || t == TagSel::Tag(m.tag));
            if let Some(m) = first {
                if m.arrive_at <= self.tick && best.is_none_or(|(at, _)| m.arrive_at < at) {
                    best = Some((m.arrive_at, src));
                }
            }
        }
        best.map(|(_, src)| src)
    }

    /// Executes one op of `rank` if it can; returns whether it did.
    fn step(&mut self, rank: usize, rng: &mut Rng) -> bool {
        let Some(&op) = self.prog.ops[rank].get(self.ranks[rank].pc) else {
            return false;
        };
        match op {
            Op::Poll => return false,
            Op::Send(id) => {
                let m = self.prog.msgs[id];
                let delay = rng.below(20);
                self.wire[m.src][m.dst].push_back(InFlight {
                    id,
                    tag: m.tag,
                    arrive_at: self.tick + delay,
                });
                self.ranks[rank].counters.on_send(m.dst);
            }
            Op::Recv(s, t) => {
                if let Some(m) = self.ranks[rank].log.take_match(s, t) {
                    self.ranks[rank].received.push(decode_id(&m.data));
                } else if let Some(src) = self.wire_match(rank, s, t) {
                    let q = &mut self.wire[src][rank];
                    let i = q
                        .iter()
                        .position(|m| matches!(t, TagSel::Any) || t == TagSel::Tag(m.tag))
                        .expect("wire_match found it");
                    let m = q.remove(i).expect("index in range");
                    self.ranks[rank].counters.on_arrive(src);
                    self.ranks[rank].received.push(m.id);
                } else {
                    return false;
                }
            }
        }
        self.ranks[rank].pc += 1;
        true
    }

    fn at_poll(&self, rank: usize) -> bool {
        matches!(self.prog.ops[rank].get(self.ranks[rank].pc), Some(Op::Poll))
    }

    fn done(&self) -> bool {
        (0..self.n).all(|r| self.ranks[r].pc >= self.prog.ops[r].len())
    }

    /// The quiescence protocol at a checkpoint every rank has reached: exchange sent counts,
    /// drain `sent - arrived` per peer in send order, reset counters.
    fn quiesce(&mut self) -> Result<(), String> {
        for dst in 0..self.n {
            let to_me: Vec<u64> = (0..self.n)
                .map(|src| self.ranks[src].counters.sent[dst])
                .collect();
            let plan =
                drain_plan(&to_me, &self.ranks[dst].counters.arrived).map_err(|e| e.to_string())?;
            for (src, &k) in plan.iter().enumerate() {
                for _ in 0..k {
                    let m = self.wire[src][dst].pop_front().ok_or_else(|| {
                        format!("plan wants a message {src}->{dst} that is not on the wire")
                    })?;
                    self.ranks[dst].counters.on_arrive(src);
                    self.ranks[dst].log.push(Logged {
                        src: src as i32,
                        tag: m.tag,
                        data: encode_id(m.id),
                    });
                }
            }
        }
        for src in 0..self.n {
            for dst in 0..self.n {
                if !self.wire[src][dst].is_empty() {
                    return Err(format!(
                        "message {src}->{dst} left on the wire after the drain"
                    ));
                }
                let (s, a) = (
                    self.ranks[src].counters.sent[dst],
                    self.ranks[dst].counters.arrived[src],
                );
                if s != a {
                    return Err(format!(
                        "after the drain {src}->{dst}: sent {s}, arrived {a}"
                    ));
                }
            }
        }
        for r in &mut self.ranks {
            r.counters.reset();
        }
        Ok(())
    }
}

fn encode_id(id: usize) -> Vec<u8> {
    (id as u64).to_le_bytes().to_vec()
}

fn decode_id(b: &[u8]) -> usize {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_le_bytes(x) as usize
}

/// One rank's part of a snapshot: program counter, ids received, encoded message log.
type Snapshot = (usize, Vec<usize>, Vec<u8>);

/// What one seed exercised, so the test can show it did real work.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    messages: usize,
    checkpoints: usize,
    drained: usize,
    crashes: usize,
    from_log: usize,
}

/// Runs one seed; `Err` describes the first violated property.
fn run(seed: u64) -> Result<Stats, String> {
    let mut rng = Rng(seed);
    let n = 2 + rng.below(4) as usize;
    let prog = generate(&mut rng, n);
    let mut world = World::new(&prog, n);
    let mut snapshot: Option<Vec<Snapshot>> = None;
    let mut crashes = 0;
    let mut stats = Stats {
        messages: prog.msgs.len(),
        ..Stats::default()
    };
    let mut steps = 0u64;
    while !world.done() {
        steps += 1;
        if steps > 1_000_000 {
            return Err("no progress (simulated deadlock)".into());
        }
        // Everyone at a poll: a checkpoint (sometimes), then all move past it.
        if (0..n).all(|r| world.at_poll(r)) {
            if rng.chance(40) {
                world.quiesce()?;
                stats.checkpoints += 1;
                stats.drained += world.ranks.iter().map(|r| r.log.len()).sum::<usize>();
                snapshot = Some(
                    world
                        .ranks
                        .iter()
                        .map(|r| (r.pc, r.received.clone(), r.log.encode()))
                        .collect(),
                );
            }
            for r in 0..n {
                world.ranks[r].pc += 1;
            }
            continue;
        }
        // A crash: back to the last snapshot (or the start); the wire is lost.
        if crashes < 3 && rng.chance(1) {
            crashes += 1;
            stats.crashes += 1;
            let mut fresh = World::new(&prog, n);
            fresh.tick = world.tick;
            if let Some(snap) = &snapshot {
                for (r, (pc, received, log)) in snap.iter().enumerate() {
                    fresh.ranks[r].pc = *pc;
                    fresh.ranks[r].received = received.clone();
                    fresh.ranks[r].log = MessageLog::decode(log).map_err(|e| e.to_string())?;
                }
            }
            world = fresh;
            continue;
        }
        let r = rng.below(n as u64) as usize;
        let logged = world.ranks[r].log.len();
        if world.step(r, &mut rng) {
            stats.from_log += logged - world.ranks[r].log.len();
        } else {
            world.tick += 1;
        }
    }
    // Every message received exactly once, and in send order per (sender, tag).
    for dst in 0..n {
        let mut got = world.ranks[dst].received.clone();
        let mut want: Vec<usize> = (0..prog.msgs.len())
            .filter(|&i| prog.msgs[i].dst == dst)
            .collect();
        for src in 0..n {
            for tag in 0..3 {
                let seq: Vec<usize> = got
                    .iter()
                    .copied()
                    .filter(|&i| prog.msgs[i].src == src && prog.msgs[i].tag == tag)
                    .collect();
                if seq.windows(2).any(|w| w[0] > w[1]) {
                    return Err(format!(
                        "rank {dst}: messages from rank {src} tag {tag} overtook: {seq:?}"
                    ));
                }
            }
        }
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return Err(format!(
                "rank {dst}: received {got:?}, expected exactly {want:?}"
            ));
        }
        if !world.ranks[dst].log.is_empty() {
            return Err(format!(
                "rank {dst}: {} logged messages never received",
                world.ranks[dst].log.len()
            ));
        }
    }
    Ok(stats)
}

#[test]
fn quiescence_simulation_over_many_seeds() {
    let seeds: Vec<u64> = match std::env::var("CKPT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("CKPT_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("CKPT_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(300u64);
            (1..=n).collect()
        }
    };
    let mut total = Stats::default();
    for &seed in &seeds {
        match run(seed) {
            Ok(s) => {
                total.messages += s.messages;
                total.checkpoints += s.checkpoints;
                total.drained += s.drained;
                total.crashes += s.crashes;
                total.from_log += s.from_log;
            }
            Err(e) => panic!(
                "seed {seed}: {e}\nreplay with: CKPT_SIM_SEED={seed} cargo test -p libckpt quiescence_simulation"
            ),
        }
    }
    eprintln!("quiescence simulation, {} seeds: {total:?}", seeds.len());
    if seeds.len() >= 100 {
        // The schedules must really put messages in flight at checkpoints and replay them.
        assert!(
            total.drained > 100 && total.crashes > 20 && total.from_log > 100,
            "{total:?}"
        );
    }
}

#[test]
fn a_message_counted_twice_is_caught_by_the_drain_plan() {
    let mut c = Counters::new(2);
    c.on_arrive(1);
    c.on_arrive(1);
    assert!(drain_plan(&[0, 1], &c.arrived).is_err());
}
