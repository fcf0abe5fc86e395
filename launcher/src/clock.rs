//! UTC calendar formatting of Unix times, without a date library: job directory stamps and
//! the times printed by `ckpt run` and `ckpt list`. Local time zones are deliberately ignored
//! so that names and listings are the same on every node.

/// (year, month, day, hour, minute, second) in UTC of `unix_s` seconds since 1970.
fn civil(unix_s: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    );
    (year, month, day, h, m, s)
}

/// `20260420-140312`: a compact stamp for directory names.
pub fn stamp(unix_s: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_s);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// `2026-04-20 14:03:12Z`: a readable UTC time.
pub fn utc(unix_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    fn check(unix_s: u64, expected: &str) {
        assert_eq!(super::utc(unix_s * 1000), expected, "{unix_s}");
    }

    #[test]
    fn dates() {
        check(0, "1970-01-01 00:00:00Z");
        check(951_782_400, "2000-02-29 00:00:00Z");
        check(1_709_251_199, "2024-02-29 23:59:59Z");
        check(1_776_693_792, "2026-04-20 14:03:12Z");
        check(4_102_444_800, "2100-01-01 00:00:00Z");
        assert_eq!(super::stamp(1_776_693_792), "20260420-140312");
    }
}
