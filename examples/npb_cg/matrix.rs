//! The CG benchmark's matrix, generated as the specification describes: a sum of `na` sparse
//! random outer products with geometrically decreasing weights, plus `(rcond - shift)` on the
//! diagonal,
//!
//! ```text
//! A = sum_{i=0}^{na-1} w_i v_i v_i^T + (rcond - shift) I,   w_i = rcond^(i/na)
//! ```
//!
//! where `v_i` has `nonzer` random entries at random distinct positions (plus entry `i`, set
//! to 0.5). Every rank draws the whole random sequence, so the matrix does not depend on the
//! rank count, and keeps only its own rows.

use super::randlc::{Randlc, SEED};

/// Bounds the smallest eigenvalue of the generated part from below.
const RCOND: f64 = 0.1;

/// A block of rows of the matrix in compressed sparse row form, columns ascending in each row.
#[derive(Debug, Clone)]
pub struct Rows {
    /// Start of each row in `cols`/`vals`, plus the end.
    pub start: Vec<usize>,
    /// Column of each entry.
    pub cols: Vec<u32>,
    /// Value of each entry.
    pub vals: Vec<f64>,
}

impl Rows {
    /// Number of rows held.
    pub fn len(&self) -> usize {
        self.start.len() - 1
    }

    /// The entries of columns `lo..hi` alone (the block of a 2-D process grid).
    pub fn columns(&self, lo: usize, hi: usize) -> Rows {
        let mut out = Rows {
            start: vec![0],
            cols: Vec::new(),
            vals: Vec::new(),
        };
        for k in 0..self.len() {
            for i in self.start[k]..self.start[k + 1] {
                if (lo..hi).contains(&(self.cols[i] as usize)) {
                    out.cols.push(self.cols[i]);
                    out.vals.push(self.vals[i]);
                }
            }
            out.start.push(out.cols.len());
        }
        out
    }

    /// `out[k] = sum_j A[k][j] * v[j]` (k counting the rows held) for the rows held, each row summed in column order.
    pub fn mul(&self, v: &[f64], out: &mut [f64]) {
        for (k, o) in out.iter_mut().enumerate() {
            let (a, b) = (self.start[k], self.start[k + 1]);
            let mut s = 0.0;
            for (c, x) in self.cols[a..b].iter().zip(&self.vals[a..b]) {
                s += x * v[*c as usize];
            }
            *o = s;
        }
    }
}

/// One random sparse vector: `nonzer` entries with values from the generator at distinct
/// positions below `n`, each position drawn as `floor(nn1 * u)` (`nn1` the smallest power of
/// two not below `n`), redrawing value and position when the position is out of range or
/// taken. Returns the entries in the order drawn.
fn random_vector(rng: &mut Randlc, n: usize, nonzer: usize, nn1: usize) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = Vec::with_capacity(nonzer + 1);
    while v.len() < nonzer {
        let value = rng.next();
        let pos = (nn1 as f64 * rng.next()) as usize;
        if pos >= n || v.iter().any(|&(p, _)| p == pos) {
            continue;
        }
        v.push((pos, value));
    }
    v
}

/// Sets entry `pos` of the sparse vector to `value`, appending it if absent.
fn set_entry(v: &mut Vec<(usize, f64)>, pos: usize, value: f64) {
    match v.iter_mut().find(|(p, _)| *p == pos) {
        Some(e) => e.1 = value,
        None => v.push((pos, value)),
    }
}

/// Generates rows `lo..hi` of the class's `na` x `na` matrix.
pub fn generate(na: usize, nonzer: usize, shift: f64, lo: usize, hi: usize) -> Rows {
    let mut rng = Randlc::new(SEED);
    // The benchmark draws one number before generating the matrix.
    rng.next();
    let nn1 = na.next_power_of_two();
    let ratio = RCOND.powf(1.0 / na as f64);
    let mut weight = 1.0;
    // Contributions to each local row, in the order generated (outer product by outer product).
    let mut parts: Vec<Vec<(u32, f64)>> = vec![Vec::new(); hi - lo];
    for i in 0..na {
        let mut v = random_vector(&mut rng, na, nonzer, nn1);
        set_entry(&mut v, i, 0.5);
        for &(row, vr) in &v {
            if !(lo..hi).contains(&row) {
                continue;
            }
            let scale = weight * vr;
            for &(col, vc) in &v {
                let mut a = vc * scale;
                if col == row && row == i {
                    a += RCOND - shift;
                }
                parts[row - lo].push((col as u32, a));
            }
        }
        weight *= ratio;
    }
    assemble(parts)
}

/// Sorts each row's contributions by column (stably: duplicates keep their generation order)
/// and sums duplicates in that order.
fn assemble(parts: Vec<Vec<(u32, f64)>>) -> Rows {
    let mut rows = Rows {
        start: vec![0],
        cols: Vec::new(),
        vals: Vec::new(),
    };
    for mut p in parts {
        p.sort_by_key(|&(c, _)| c);
        let row_start = rows.cols.len();
        for (c, a) in p {
            if rows.cols.len() > row_start && rows.cols.last() == Some(&c) {
                if let Some(last) = rows.vals.last_mut() {
                    *last += a;
                }
            } else {
                rows.cols.push(c);
                rows.vals.push(a);
            }
        }
        rows.start.push(rows.cols.len());
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matrix is symmetric (to rounding: the products are formed in another order), has
    /// its diagonal, and split over ranks it is the same matrix.
    #[test]
    fn symmetric_and_independent_of_the_split() {
        let (na, nonzer, shift) = (300, 5, 10.0);
        let whole = generate(na, nonzer, shift, 0, na);
        let get = |r: usize, c: u32| {
            let (a, b) = (whole.start[r], whole.start[r + 1]);
            whole.cols[a..b]
                .iter()
                .position(|&x| x == c)
                .map(|k| whole.vals[a + k])
        };
        for r in 0..na {
            for k in whole.start[r]..whole.start[r + 1] {
                let t = get(whole.cols[k] as usize, r as u32).unwrap();
                assert!((t - whole.vals[k]).abs() <= 1e-15 * t.abs(), "({r}, {k})");
            }
            assert!(get(r, r as u32).is_some(), "row {r} has no diagonal");
        }
        let top = generate(na, nonzer, shift, 0, 100);
        let bottom = generate(na, nonzer, shift, 100, na);
        assert_eq!(top.cols, whole.cols[..whole.start[100]]);
        assert_eq!(bottom.vals, whole.vals[whole.start[100]..]);
    }

    /// Column blocks hold each row's entries of their columns, in order: side by side they
    /// are the whole row.
    #[test]
    fn column_blocks_partition_each_row() {
        let (na, nonzer, shift) = (300, 5, 10.0);
        let rows = generate(na, nonzer, shift, 50, 120);
        let blocks = [
            rows.columns(0, 100),
            rows.columns(100, 200),
            rows.columns(200, na),
        ];
        for k in 0..rows.len() {
            let mut joined: Vec<(u32, f64)> = Vec::new();
            for (b, lo) in blocks.iter().zip([0u32, 100, 200]) {
                let entries = b.start[k]..b.start[k + 1];
                assert!(b.cols[entries.clone()]
                    .iter()
                    .all(|&c| c >= lo && c < lo + 100));
                joined.extend(entries.map(|i| (b.cols[i], b.vals[i])));
            }
            let whole: Vec<(u32, f64)> = (rows.start[k]..rows.start[k + 1])
                .map(|i| (rows.cols[i], rows.vals[i]))
                .collect();
            assert_eq!(joined, whole, "row {k}");
        }
        assert_eq!(rows.columns(0, 0).cols.len(), 0);
        assert_eq!(rows.columns(0, 0).len(), rows.len());
    }
}
