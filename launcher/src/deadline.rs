//! The last checkpoint scheduled from the job's end time (`ckpt run --end-time`).
//!
//! Where the end is known (`--end-time UNIX_SECONDS`, or inside a Slurm allocation
//! `SLURM_JOB_END_TIME`, else what `squeue -h -o %e -j $SLURM_JOB_ID` says), the launcher asks
//! the job to checkpoint and stop at `end - margin - estimate`: the stop then goes exactly as
//! after the exit signal. `estimate` is [`SAFETY`] times the slowest of the job so far, earlier
//! runs included: its checkpoints (`total_secs` of its `committed` events) and its stops on
//! request (`stop_took`: from the launcher's request to the ranks' exit, which includes the
//! request reaching the ranks and their quiescence), or [`DEFAULT_ESTIMATE`] before any;
//! `margin` (`--end-margin`) covers what the estimate does not measure (the request's way to
//! the ranks and their quiescence until a stop was measured, the stop). A slow checkpoint moves
//! the firing time earlier, a fast one later.
//!
//! When the firing time has already passed as the run starts, nothing is scheduled: the job
//! runs anyway (its periodic checkpoints still save progress), since stopping at once would
//! make a requeued job go round without progress. A relaunch after a failure whose firing time
//! has passed is not made: the run stops as if on request, its newest epoch intact.
//!
//! Parsing and the firing time are pure; [`query_squeue`] is the only process spawned here.

use std::process::Command;
use std::time::Duration;

use ckpt::events::Event;

use crate::clock;

/// Slurm's end time of the job, in seconds since 1970 (set by newer Slurm releases).
pub const SLURM_END_VAR: &str = "SLURM_JOB_END_TIME";
/// Set inside a Slurm allocation: the job to ask `squeue` about.
pub const SLURM_JOB_VAR: &str = "SLURM_JOB_ID";
/// The estimate before the job committed any checkpoint.
pub const DEFAULT_ESTIMATE: Duration = Duration::from_secs(10);
/// The measured checkpoint time is multiplied by this.
pub const SAFETY: f64 = 2.0;
/// `--end-margin`'s default.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(30);

/// `--end-time` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndFlag {
    /// From Slurm inside an allocation, else none.
    Auto,
    /// This Unix time, in seconds.
    At(u64),
    /// No scheduled checkpoint.
    Off,
}

/// Parses `--end-time`: `auto`, `off` or whole Unix seconds.
pub fn parse_flag(s: &str) -> Result<EndFlag, String> {
    match s.trim() {
        "auto" => Ok(EndFlag::Auto),
        "off" | "none" => Ok(EndFlag::Off),
        t => t.parse::<u64>().map(EndFlag::At).map_err(|_| {
            "expected auto, off, or the end as whole seconds since 1970 (date +%s -d ...)"
                .to_owned()
        }),
    }
}

/// Where the end time comes from, once the flag and the environment are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndSource {
    /// No end time: nothing is scheduled.
    None,
    /// Known now: the time (Unix seconds) and what said so.
    At(u64, &'static str),
    /// Ask `squeue` about this Slurm job when the run starts.
    Squeue(String),
}

/// Resolves `--end-time` with the launcher's environment (`var` reads a variable).
pub fn source(flag: EndFlag, var: impl Fn(&str) -> Option<String>) -> Result<EndSource, String> {
    match flag {
        EndFlag::Off => Ok(EndSource::None),
        EndFlag::At(t) => Ok(EndSource::At(t, "--end-time")),
        EndFlag::Auto => {
            if let Some(v) = var(SLURM_END_VAR).filter(|v| !v.trim().is_empty()) {
                return match v.trim().parse::<u64>() {
                    Ok(0) => Ok(EndSource::None),
                    Ok(t) => Ok(EndSource::At(t, SLURM_END_VAR)),
                    Err(_) => Err(format!(
                        "{SLURM_END_VAR}={v}: not whole seconds since 1970 (say --end-time \
                         off, or give the end with --end-time UNIX_SECONDS)"
                    )),
                };
            }
            Ok(match var(SLURM_JOB_VAR).filter(|v| !v.trim().is_empty()) {
                Some(id) => EndSource::Squeue(id.trim().to_owned()),
                None => EndSource::None,
            })
        }
    }
}

/// Parses `squeue -h -o %e` printed in UTC: `YYYY-MM-DDTHH:MM:SS`, or a word for no end
/// (`NONE`, `UNLIMITED`, `N/A`, `Unknown`). Returns Unix seconds.
pub fn parse_slurm_time(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if ["NONE", "UNLIMITED", "N/A", "UNKNOWN", "INFINITE"]
        .contains(&s.to_ascii_uppercase().as_str())
    {
        return Ok(None);
    }
    let bad = || format!("{s:?}: not a time YYYY-MM-DDTHH:MM:SS, NONE or UNLIMITED");
    let (date, time) = s.split_once('T').ok_or_else(bad)?;
    let num = |p: &str, digits: usize| {
        (p.len() == digits && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
            .ok_or_else(bad)
    };
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let (y, mo, da) = (num(y, 4)?, num(mo, 2)?, num(da, 2)?);
    let (h, mi, se) = (num(h, 2)?, num(mi, 2)?, num(se, 2)?);
    if !(1..=12).contains(&mo)
        || da == 0
        || da > days_in_month(y, mo)
        || h > 23
        || mi > 59
        || se > 59
    {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), mo, da);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    u64::try_from(secs).map(Some).map_err(|_| bad())
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of `clock`'s).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Asks `squeue` for job `id`'s end time, printed in UTC in the standard format whatever the
/// caller's `TZ` and `SLURM_TIME_FORMAT`.
pub fn query_squeue(id: &str) -> Result<Option<u64>, String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%e", "-j", id])
        .env("TZ", "UTC0")
        .env("SLURM_TIME_FORMAT", "standard")
        .output()
        .map_err(|e| format!("cannot run squeue: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "squeue -h -o %e -j {id} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(format!("squeue -h -o %e -j {id} printed nothing"));
    }
    parse_slurm_time(line).map_err(|e| format!("squeue -h -o %e -j {id}: {e}"))
}

/// One measured time: a committed checkpoint's `total_secs`, or a stop on request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds.
    pub secs: f64,
    /// The epoch committed, or stopped after.
    pub epoch: u64,
    /// Whether it is a whole stop (`stop_took`) rather than a checkpoint.
    pub stop: bool,
}

/// The slowest sample seen, if any.
pub type Slowest = Option<Sample>;

/// The sample of `event`, if it measures a checkpoint or a stop.
pub fn sample(event: &Event) -> Option<Sample> {
    match *event {
        Event::Committed {
            epoch, total_secs, ..
        } => Some(Sample {
            secs: total_secs,
            epoch,
            stop: false,
        }),
        Event::StopTook { epoch, secs } => Some(Sample {
            secs,
            epoch,
            stop: true,
        }),
        _ => None,
    }
}

/// `slowest`, or `new` when it is slower (a time that is no number, or negative, is ignored).
pub fn slower(slowest: Slowest, new: Sample) -> Slowest {
    match slowest {
        Some(s) if s.secs >= new.secs => slowest,
        _ if !new.secs.is_finite() || new.secs < 0.0 => slowest,
        _ => Some(new),
    }
}

/// The slowest sample of `events`.
pub fn slowest_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Slowest {
    events.into_iter().filter_map(sample).fold(None, slower)
}

/// The estimate of the last checkpoint and stop: [`SAFETY`] times the slowest sample, else
/// [`DEFAULT_ESTIMATE`].
pub fn estimate(slowest: Slowest) -> Duration {
    match slowest {
        Some(s) if s.secs.is_finite() && s.secs >= 0.0 => {
            Duration::from_secs_f64((s.secs * SAFETY).min(1e9))
        }
        _ => DEFAULT_ESTIMATE,
    }
}

/// When to ask for the last checkpoint, in Unix milliseconds: `end - margin - estimate`.
pub fn fire_at_ms(end_s: u64, margin: Duration, estimate: Duration) -> u64 {
    let lead = margin.saturating_add(estimate).as_millis();
    u64::try_from(u128::from(end_s) * 1000).map_or(u64::MAX, |end| {
        end.saturating_sub(u64::try_from(lead).unwrap_or(u64::MAX))
    })
}

/// `estimate 3.20 s: 2 x 1.60 s of epoch 4`, `estimate 4.60 s: 2 x 2.30 s, the stop after
/// epoch 5`, or `estimate 10 s, the default before a first checkpoint`.
fn estimate_text(slowest: Slowest) -> String {
    let e = estimate(slowest).as_secs_f64();
    match slowest {
        Some(Sample {
            secs,
            epoch,
            stop: false,
        }) => format!("estimate {e:.2} s: {SAFETY} x {secs:.2} s of epoch {epoch}"),
        Some(Sample {
            secs,
            epoch,
            stop: true,
        }) => format!("estimate {e:.2} s: {SAFETY} x {secs:.2} s, the stop after epoch {epoch}"),
        None => format!("estimate {e:.0} s, the default before a first checkpoint"),
    }
}

/// The run's schedule of its last checkpoint.
#[derive(Debug, Clone)]
pub struct Schedule {
    end_s: u64,
    source: &'static str,
    margin: Duration,
    slowest: Slowest,
    /// The request was made (or nothing is scheduled).
    done: bool,
}

impl Schedule {
    /// The schedule of a run starting at `now_ms` with end time `end_s` (from `source`), and
    /// the line to print: scheduled, or too close (then nothing is scheduled).
    pub fn start(
        end_s: u64,
        source: &'static str,
        margin: Duration,
        slowest: Slowest,
        now_ms: u64,
    ) -> (Schedule, String) {
        let mut s = Schedule {
            end_s,
            source,
            margin,
            slowest,
            done: false,
        };
        let fire = s.fire_at_ms();
        let line = if fire <= now_ms {
            s.done = true;
            format!(
                "{}: too close for a last checkpoint (margin {} s + {}); running without one",
                s.end_text(now_ms),
                margin.as_secs(),
                estimate_text(slowest)
            )
        } else {
            format!(
                "{}; last checkpoint at {}, in {} s ({}; margin {} s)",
                s.end_text(now_ms),
                clock::utc(fire),
                (fire - now_ms) / 1000,
                estimate_text(slowest),
                margin.as_secs()
            )
        };
        (s, line)
    }

    /// `end time 2026-11-26 17:00:00Z (squeue) in 540 s`.
    fn end_text(&self, now_ms: u64) -> String {
        let left = (i128::from(self.end_s) * 1000 - i128::from(now_ms)) / 1000;
        format!(
            "end time {} ({}) in {left} s",
            clock::utc(self.end_s.saturating_mul(1000)),
            self.source
        )
    }

    /// When the request is due, in Unix milliseconds, with the estimate so far.
    pub fn fire_at_ms(&self) -> u64 {
        fire_at_ms(self.end_s, self.margin, estimate(self.slowest))
    }

    /// A checkpoint or stop took this long (the slowest one is kept).
    pub fn measured(&mut self, sample: Sample) {
        self.slowest = slower(self.slowest, sample);
    }

    /// Whether a request is still to be made and due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        !self.done && now_ms >= self.fire_at_ms()
    }

    /// Marks the request made (by this schedule or the exit signal): it fires once.
    pub fn done(&mut self) {
        self.done = true;
    }

    /// What to say as the request is made: `end time ... in 40 s (estimate ...)`.
    pub fn firing(&self, now_ms: u64) -> String {
        format!(
            "{} ({}; margin {} s)",
            self.end_text(now_ms),
            estimate_text(self.slowest),
            self.margin.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        for (s, want) in [
            ("auto", Ok(EndFlag::Auto)),
            ("off", Ok(EndFlag::Off)),
            (" 1795708883 ", Ok(EndFlag::At(1_795_708_883))),
            ("0", Ok(EndFlag::At(0))),
        ] {
            assert_eq!(parse_flag(s), want, "{s}");
        }
        for bad in [
            "",
            "soon",
            "-5",
            "1.5",
            "2026-11-26T17:00:00",
            "18446744073709551616",
        ] {
            let e = parse_flag(bad).unwrap_err();
            assert!(e.contains("expected auto, off"), "{bad}: {e}");
        }
    }

    #[test]
    fn slurm_times() {
        for (s, want) in [
            ("1970-01-01T00:00:00", Some(0)),
            ("2026-11-26T16:02:23", Some(1_795_708_943)),
            ("2000-02-29T00:00:00", Some(951_782_400)),
            ("2024-02-29T23:59:59", Some(1_709_251_199)),
            ("2100-01-01T00:00:00\n", Some(4_102_444_800)),
            ("NONE", None),
            ("UNLIMITED", None),
            ("N/A", None),
            ("Unknown", None),
        ] {
            assert_eq!(parse_slurm_time(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "16:02:23",
            "2026-11-26",
            "2026-11-26 16:02:23",
            "2026-13-01T00:00:00",
            "2026-02-29T00:00:00",
            "2026-11-26T24:00:00",
            "2026-11-26T16:60:00",
            "26-11-26T16:02:23",
            "2026-11-26T16:02:2x",
            "1969-12-31T23:59:59",
        ] {
            let e = parse_slurm_time(bad).unwrap_err();
            assert!(e.contains("not a time"), "{bad}: {e}");
        }
    }

    /// The inverse of `clock`'s formatting for every day over four centuries' edges.
    #[test]
    fn days_round_trip_with_clock() {
        for day in (0..200_000u64).step_by(7) {
            let t = day * 86_400 + 3661;
            let text = clock::utc(t * 1000).replace(' ', "T").replace('Z', "");
            assert_eq!(parse_slurm_time(&text), Ok(Some(t)), "{text}");
        }
    }

    #[test]
    fn sources() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none: &[(&str, &str)] = &[];
        let job: &[(&str, &str)] = &[(SLURM_JOB_VAR, "42")];
        let both: &[(&str, &str)] = &[(SLURM_JOB_VAR, "42"), (SLURM_END_VAR, "1795708943")];
        let zero: &[(&str, &str)] = &[(SLURM_JOB_VAR, "42"), (SLURM_END_VAR, "0")];
        let bad: &[(&str, &str)] = &[(SLURM_JOB_VAR, "42"), (SLURM_END_VAR, "tomorrow")];
        assert_eq!(source(EndFlag::Auto, env(none)), Ok(EndSource::None));
        assert_eq!(
            source(EndFlag::Auto, env(job)),
            Ok(EndSource::Squeue("42".into()))
        );
        assert_eq!(
            source(EndFlag::Auto, env(both)),
            Ok(EndSource::At(1_795_708_943, SLURM_END_VAR))
        );
        assert_eq!(source(EndFlag::Auto, env(zero)), Ok(EndSource::None));
        let e = source(EndFlag::Auto, env(bad)).unwrap_err();
        assert!(
            e.starts_with("SLURM_JOB_END_TIME=tomorrow: not whole seconds"),
            "{e}"
        );
        assert_eq!(source(EndFlag::Off, env(both)), Ok(EndSource::None));
        assert_eq!(
            source(EndFlag::At(7), env(both)),
            Ok(EndSource::At(7, "--end-time"))
        );
    }

    fn ck(secs: f64, epoch: u64) -> Sample {
        Sample {
            secs,
            epoch,
            stop: false,
        }
    }

    fn stop(secs: f64, epoch: u64) -> Sample {
        Sample {
            secs,
            epoch,
            stop: true,
        }
    }

    /// Checkpoints and stops of every run in the log count; other events do not.
    #[test]
    fn the_slowest_of_a_log() {
        let committed = |epoch, total_secs| Event::Committed {
            epoch,
            poll: 40 * epoch,
            bytes: 1,
            logged: 0,
            write_secs: 0.0,
            total_secs,
            cut_secs: 0.0,
        };
        let restored = Event::Restored {
            epoch: 2,
            bytes: 1,
            read_secs: 99.0,
            unix_ms: 0,
        };
        let log = [
            committed(1, 0.4),
            committed(2, 0.9),
            Event::Stopping { epoch: 3 },
            committed(3, 0.2),
            Event::StopTook {
                epoch: 3,
                secs: 1.7,
            },
            restored,
            committed(4, 1.1),
        ];
        assert_eq!(slowest_of(&log[..2]), Some(ck(0.9, 2)));
        assert_eq!(slowest_of(&log), Some(stop(1.7, 3)));
        assert_eq!(slowest_of(&log[5..]), Some(ck(1.1, 4)));
        assert_eq!(slowest_of(&log[5..6]), None);
    }

    #[test]
    fn estimates_and_firing_times() {
        let m = Duration::from_secs(30);
        for (slowest, est_ms, fire_ms) in [
            (None, 10_000, 960_000),
            (Some(ck(1.6, 4)), 3_200, 966_800),
            (Some(stop(0.0, 1)), 0, 970_000),
            (Some(ck(f64::NAN, 1)), 10_000, 960_000),
            (Some(ck(2000.0, 9)), 4_000_000, 0),
        ] {
            let e = estimate(slowest);
            assert_eq!(e.as_millis(), est_ms, "{slowest:?}");
            assert_eq!(fire_at_ms(1000, m, e), fire_ms, "{slowest:?}");
        }
        assert_eq!(fire_at_ms(u64::MAX, m, DEFAULT_ESTIMATE), u64::MAX);
    }

    #[test]
    fn a_schedule_fires_once_and_follows_the_slowest_checkpoint() {
        let m = Duration::from_secs(30);
        let now = 1_795_708_000_000;
        let end = 1_795_708_100;
        let (mut s, line) = Schedule::start(end, "squeue", m, None, now);
        assert_eq!(
            line,
            "end time 2026-11-26 15:48:20Z (squeue) in 100 s; last checkpoint at \
             2026-11-26 15:47:40Z, in 60 s (estimate 10 s, the default before a first \
             checkpoint; margin 30 s)"
        );
        assert!(!s.due(now + 59_999));
        s.measured(ck(1.5, 1));
        s.measured(ck(0.5, 2));
        assert_eq!(s.fire_at_ms(), now + 67_000, "2 x the slowest, 1.5 s");
        assert!(!s.due(now + 66_999) && s.due(now + 67_000));
        assert_eq!(
            s.firing(now + 67_000),
            "end time 2026-11-26 15:48:20Z (squeue) in 33 s (estimate 3.00 s: 2 x 1.50 s of \
             epoch 1; margin 30 s)"
        );
        s.measured(ck(f64::NAN, 4));
        assert_eq!(
            s.fire_at_ms(),
            now + 67_000,
            "a time that is no number is ignored"
        );
        s.measured(stop(40.0, 3));
        assert!(
            s.firing(now)
                .contains("(estimate 80.00 s: 2 x 40.00 s, the stop after epoch 3;"),
            "{}",
            s.firing(now)
        );
        assert!(s.due(now + 1), "a slow stop makes it due at once");
        s.done();
        assert!(!s.due(now + 100_000), "once");
    }

    #[test]
    fn too_close_at_start_schedules_nothing() {
        let m = Duration::from_secs(30);
        let now = 1_795_708_000_000;
        let (s, line) = Schedule::start(1_795_708_031, "--end-time", m, Some(ck(1.0, 3)), now);
        assert_eq!(
            line,
            "end time 2026-11-26 15:47:11Z (--end-time) in 31 s: too close for a last \
             checkpoint (margin 30 s + estimate 2.00 s: 2 x 1.00 s of epoch 3); running \
             without one"
        );
        assert!(!s.due(now + 1_000_000));
        let (_, past) = Schedule::start(1_795_707_000, "--end-time", m, None, now);
        assert!(past.contains("in -1000 s: too close"), "{past}");
    }
}
