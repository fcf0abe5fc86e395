//! Hostlists in Slurm's syntax, pure: [`parse`] expands `n[1-4,7]`, `n[01-10]` (zero padding
//! kept), `a,b` and `rack[1-2]-n[1-3]` (several bracket groups: their cartesian product, the
//! last group varying fastest, as Slurm expands it); [`compress`] writes names back as a
//! hostlist that [`parse`] expands to the same names in the same order.

use std::fmt;

/// Most hosts a hostlist may expand to (checked before anything is expanded).
pub const MAX_HOSTS: usize = 100_000;

/// Why a hostlist was refused; each names the offending item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostlistError {
    /// Nothing at all, or nothing between two commas.
    EmptyItem(String),
    /// A `[` without its `]`, a `]` without its `[`, or a `[` inside brackets.
    Unbalanced(String),
    /// A bracket element that is not `N` or `N-M`, or an empty one.
    BadRange { item: String, range: String },
    /// `N-M` with `M < N`.
    Reversed { item: String, range: String },
    /// The list expands to more than [`MAX_HOSTS`] names.
    TooMany { list: String, max: usize },
    /// An expanded name that is not a plain host name (letters, digits, `-`, `_`, `.`; not
    /// starting with `-` or `.`).
    BadName(String),
}

impl fmt::Display for HostlistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostlistError::EmptyItem(list) => write!(f, "{list:?}: an empty host name"),
            HostlistError::Unbalanced(item) => write!(f, "{item:?}: unbalanced brackets"),
            HostlistError::BadRange { item, range } => write!(
                f,
                "{item:?}: {range:?} is not a number or a range N-M of numbers"
            ),
            HostlistError::Reversed { item, range } => {
                write!(f, "{item:?}: range {range:?} runs backwards")
            }
            HostlistError::TooMany { list, max } => {
                write!(f, "{list:?}: more than {max} hosts")
            }
            HostlistError::BadName(name) => write!(
                f,
                "{name:?} is not a host name (letters, digits, '-', '_', '.'; not starting \
                 with '-' or '.')"
            ),
        }
    }
}

impl std::error::Error for HostlistError {}

/// One piece of an item: literal text, or a bracket group of numbered ranges.
#[derive(Debug)]
enum Piece {
    Text(String),
    /// `(low, high, width)`: numbers `low..=high` printed zero-padded to `width` digits.
    Ranges(Vec<(u64, u64, usize)>),
}

impl Piece {
    fn count(&self) -> u128 {
        match self {
            Piece::Text(_) => 1,
            Piece::Ranges(r) => r.iter().map(|&(lo, hi, _)| u128::from(hi - lo) + 1).sum(),
        }
    }
}

/// Expands a hostlist into its host names, in order. Duplicates are kept (Slurm keeps them);
/// callers that need distinct hosts check.
pub fn parse(list: &str) -> Result<Vec<String>, HostlistError> {
    let items = split_items(list)?;
    let mut parsed = Vec::with_capacity(items.len());
    let mut total: u128 = 0;
    for item in &items {
        let pieces = pieces(item)?;
        total += pieces.iter().map(Piece::count).product::<u128>();
        if total > MAX_HOSTS as u128 {
            return Err(HostlistError::TooMany {
                list: list.to_owned(),
                max: MAX_HOSTS,
            });
        }
        parsed.push(pieces);
    }
    let mut hosts = Vec::with_capacity(total as usize);
    for pieces in &parsed {
        expand(pieces, String::new(), &mut hosts);
    }
    match hosts.iter().find(|h| !plain(h)) {
        Some(bad) => Err(HostlistError::BadName(bad.clone())),
        None => Ok(hosts),
    }
}

/// Splits on the commas outside brackets.
fn split_items(list: &str) -> Result<Vec<&str>, HostlistError> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    if items.iter().any(|i| i.trim().is_empty()) {
        return Err(HostlistError::EmptyItem(list.to_owned()));
    }
    Ok(items.into_iter().map(str::trim).collect())
}

/// Cuts one item into literal text and bracket groups.
fn pieces(item: &str) -> Result<Vec<Piece>, HostlistError> {
    let unbalanced = || HostlistError::Unbalanced(item.to_owned());
    let mut out = Vec::new();
    let mut rest = item;
    while !rest.is_empty() {
        match rest.find(['[', ']']) {
            None => {
                out.push(Piece::Text(rest.to_owned()));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b']' => return Err(unbalanced()),
            Some(i) => {
                if i > 0 {
                    out.push(Piece::Text(rest[..i].to_owned()));
                }
                let inner_end = rest[i + 1..].find(['[', ']']).ok_or_else(unbalanced)?;
                let close = i + 1 + inner_end;
                if rest.as_bytes()[close] == b'[' {
                    return Err(unbalanced());
                }
                out.push(Piece::Ranges(ranges(item, &rest[i + 1..close])?));
                rest = &rest[close + 1..];
            }
        }
    }
    Ok(out)
}

/// Parses the inside of a bracket group: `1-4,7`, `01-10`.
fn ranges(item: &str, inner: &str) -> Result<Vec<(u64, u64, usize)>, HostlistError> {
    inner
        .split(',')
        .map(|range| {
            let bad = || HostlistError::BadRange {
                item: item.to_owned(),
                range: range.to_owned(),
            };
            let number = |s: &str| {
                let s = s.trim();
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                s.parse::<u64>().map(|n| (n, s.len())).map_err(|_| bad())
            };
            let (lo, hi) = match range.split_once('-') {
                Some((lo, hi)) => (number(lo)?, number(hi)?.0),
                None => {
                    let lo = number(range)?;
                    (lo, lo.0)
                }
            };
            if hi < lo.0 {
                return Err(HostlistError::Reversed {
                    item: item.to_owned(),
                    range: range.to_owned(),
                });
            }
            // The low bound's digits set the width: `08-10` pads, `8-10` does not.
            Ok((lo.0, hi, lo.1))
        })
        .collect()
}

/// Appends every name `prefix + pieces` expands to, the last group varying fastest.
fn expand(pieces: &[Piece], prefix: String, out: &mut Vec<String>) {
    let Some((first, rest)) = pieces.split_first() else {
        out.push(prefix);
        return;
    };
    match first {
        Piece::Text(t) => expand(rest, prefix + t, out),
        Piece::Ranges(ranges) => {
            for &(lo, hi, width) in ranges {
                for n in lo..=hi {
                    expand(rest, format!("{prefix}{n:0width$}"), out);
                }
            }
        }
    }
}

/// Whether `name` is a plain host name.
pub fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Writes `hosts` as a hostlist: runs of names that differ only in a trailing number, with the
/// numbers increasing and padded alike, share one bracket group (`n[1-3,7],login`). Order is
/// kept, so `parse(&compress(h)) == h` for plain names.
pub fn compress<S: AsRef<str>>(hosts: &[S]) -> String {
    let mut items: Vec<String> = Vec::new();
    let mut run: Option<Run> = None;
    for host in hosts {
        let host = host.as_ref();
        let (prefix, digits) = split_number(host);
        if let (Some(r), Some(d)) = (&mut run, digits) {
            if r.extend(prefix, d) {
                continue;
            }
        }
        if let Some(r) = run.take() {
            items.push(r.render());
        }
        match digits {
            Some(d) => run = Some(Run::new(prefix, d)),
            None => items.push(host.to_owned()),
        }
    }
    if let Some(r) = run {
        items.push(r.render());
    }
    items.join(",")
}

/// `("n", Some("07"))` for `n07`; `(name, None)` without a trailing number.
fn split_number(host: &str) -> (&str, Option<&str>) {
    let cut = host.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    // A number too long for u64 stays text.
    if cut == host.len() || host.len() - cut > 19 {
        return (host, None);
    }
    (&host[..cut], Some(&host[cut..]))
}

/// Names with one prefix and increasing numbers of one width, as ranges.
struct Run {
    prefix: String,
    width: usize,
    ranges: Vec<(u64, u64)>,
}

impl Run {
    fn new(prefix: &str, digits: &str) -> Run {
        let n = digits.parse().unwrap_or(0);
        Run {
            prefix: prefix.to_owned(),
            width: digits.len(),
            ranges: vec![(n, n)],
        }
    }

    /// Takes `prefix + digits` if it continues the run; says whether it did.
    fn extend(&mut self, prefix: &str, digits: &str) -> bool {
        let Ok(n) = digits.parse::<u64>() else {
            return false;
        };
        let width = self.width;
        let last = self.ranges.last_mut().map_or(0, |r| r.1);
        if prefix != self.prefix || n <= last || format!("{n:0width$}") != digits {
            return false;
        }
        match self.ranges.last_mut() {
            Some(r) if r.1 + 1 == n => r.1 = n,
            _ => self.ranges.push((n, n)),
        }
        true
    }

    fn render(&self) -> String {
        let w = self.width;
        if let [(lo, hi)] = self.ranges[..] {
            if lo == hi {
                return format!("{}{lo:0w$}", self.prefix);
            }
        }
        let inner: Vec<String> = self
            .ranges
            .iter()
            .map(|&(lo, hi)| match lo == hi {
                true => format!("{lo:0w$}"),
                false => format!("{lo:0w$}-{hi:0w$}"),
            })
            .collect();
        format!("{}[{}]", self.prefix, inner.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(list: &str) -> String {
        parse(list).unwrap().join(" ")
    }

    #[test]
    fn expands_like_slurm() {
        for (list, want) in [
            ("n1", "n1"),
            ("a,b", "a b"),
            (" a , b ", "a b"),
            ("n[1-4,7]", "n1 n2 n3 n4 n7"),
            ("n[01-03]", "n01 n02 n03"),
            ("n[08-10]", "n08 n09 n10"),
            ("n[8-10]", "n8 n9 n10"),
            ("n[007]", "n007"),
            ("n[7,1-2]", "n7 n1 n2"),
            (
                "rack[1-2]-n[1-3]",
                "rack1-n1 rack1-n2 rack1-n3 rack2-n1 rack2-n2 rack2-n3",
            ),
            ("[1-2]x", "1x 2x"),
            ("n[1-2],login,m[3]", "n1 n2 login m3"),
            ("n1,n1", "n1 n1"),
            ("node-a.example", "node-a.example"),
        ] {
            assert_eq!(ok(list), want, "{list}");
        }
    }

    #[test]
    fn refuses_with_clear_errors() {
        for (list, want) in [
            ("", "\"\": an empty host name"),
            ("a,,b", "\"a,,b\": an empty host name"),
            ("a,", "\"a,\": an empty host name"),
            ("n[1-3", "\"n[1-3\": unbalanced brackets"),
            ("n1-3]", "\"n1-3]\": unbalanced brackets"),
            ("n[[1]]", "\"n[[1]]\": unbalanced brackets"),
            (
                "n[]",
                "\"n[]\": \"\" is not a number or a range N-M of numbers",
            ),
            (
                "n[1,]",
                "\"n[1,]\": \"\" is not a number or a range N-M of numbers",
            ),
            (
                "n[a-3]",
                "\"n[a-3]\": \"a-3\" is not a number or a range N-M of numbers",
            ),
            (
                "n[1-2-3]",
                "\"n[1-2-3]\": \"1-2-3\" is not a number or a range N-M of numbers",
            ),
            ("n[4-1]", "\"n[4-1]\": range \"4-1\" runs backwards"),
            ("n[1-100001]", "\"n[1-100001]\": more than 100000 hosts"),
            (
                "a[1-1000]b[1-1000]",
                "\"a[1-1000]b[1-1000]\": more than 100000 hosts",
            ),
            (
                "n[1-18446744073709551615]",
                "\"n[1-18446744073709551615]\": more than 100000 hosts",
            ),
            (
                "../x",
                "\"../x\" is not a host name (letters, digits, '-', '_', '.'; not starting with \
                 '-' or '.')",
            ),
            ("a b", "\"a b\" is not a host name (letters, digits, '-', '_', '.'; not starting with '-' or '.')"),
            ("-n[1]", "\"-n1\" is not a host name (letters, digits, '-', '_', '.'; not starting with '-' or '.')"),
        ] {
            assert_eq!(parse(list).unwrap_err().to_string(), want, "{list}");
        }
        assert_eq!(parse("n[1-100000]").unwrap().len(), MAX_HOSTS);
    }

    #[test]
    fn compresses_in_order() {
        for (hosts, want) in [
            (&["n1", "n2", "n3", "n4", "n7"][..], "n[1-4,7]"),
            (&["n01", "n02", "n10"], "n[01-02,10]"),
            (&["n08", "n09", "n10"], "n[08-10]"),
            (&["n8", "n9", "n10"], "n[8-10]"),
            (&["n8", "n09"], "n8,n09"),
            (&["n2", "n1"], "n2,n1"),
            (&["n1", "n1"], "n1,n1"),
            (&["login", "n1", "n2", "m1"], "login,n[1-2],m1"),
            (
                &["rack1-n1", "rack1-n2", "rack2-n1"],
                "rack1-n[1-2],rack2-n1",
            ),
            (&["n5"], "n5"),
            (&[], ""),
        ] {
            assert_eq!(compress(hosts), want, "{hosts:?}");
        }
    }

    fn host() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["n", "rack1-n", "a.b", "x_", "0"]),
            prop::option::of((0u64..30, 0usize..4)),
        )
            .prop_map(|(p, num)| match num {
                Some((n, w)) => format!("{p}{n:0w$}"),
                None => p.to_owned(),
            })
    }

    proptest! {
        #[test]
        fn parse_of_compress_is_identity(hosts in prop::collection::vec(host(), 1..40)) {
            let list = compress(&hosts);
            prop_assert_eq!(parse(&list).unwrap(), hosts, "{}", list);
        }
    }
}
