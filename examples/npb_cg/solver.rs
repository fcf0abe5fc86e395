//! Inverse power iteration with conjugate gradient, as the CG benchmark specifies: each outer
//! iteration solves `A z = x` approximately with 25 unpreconditioned CG iterations from
//! `z = 0`, then sets `zeta = shift + 1 / (x . z)` and `x = z / ||z||`.
//!
//! Vectors are distributed by rows (each rank holds the rows of its [`Rows`]); the
//! communication goes through [`Team`], so the solver runs alike on MPI ranks and in a unit
//! test on one process.

use super::matrix::Rows;

/// CG iterations per outer iteration.
pub const CG_ITERATIONS: usize = 25;

/// What the solver needs from the ranks.
pub trait Team {
    /// Error of a failed exchange.
    type Error;
    /// The sums over all ranks of each rank's `local` values, summed in rank order so the
    /// result is the same on every rank and in every run with as many ranks.
    fn sums<const N: usize>(&self, local: [f64; N]) -> Result<[f64; N], Self::Error>;
    /// The whole vector, from each rank's rows.
    fn whole(&self, local: &[f64]) -> Result<Vec<f64>, Self::Error>;
}

/// Dot product of two local blocks, summed in index order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scratch vectors of one rank, rebuilt at every outer iteration (not state).
#[derive(Debug, Default)]
pub struct Scratch {
    z: Vec<f64>,
    r: Vec<f64>,
    p: Vec<f64>,
    q: Vec<f64>,
}

/// Approximately solves `A z = x` from `z = 0`; returns `z` (in the scratch) and the
/// residual norm `||x - A z||`.
fn conj_grad<T: Team>(a: &Rows, x: &[f64], s: &mut Scratch, team: &T) -> Result<f64, T::Error> {
    let n = x.len();
    s.z = vec![0.0; n];
    s.q = vec![0.0; n];
    s.r = x.to_vec();
    s.p = x.to_vec();
    let [mut rho] = team.sums([dot(&s.r, &s.r)])?;
    for _ in 0..CG_ITERATIONS {
        a.mul(&team.whole(&s.p)?, &mut s.q);
        let [pq] = team.sums([dot(&s.p, &s.q)])?;
        let alpha = rho / pq;
        for k in 0..n {
            s.z[k] += alpha * s.p[k];
            s.r[k] -= alpha * s.q[k];
        }
        let rho0 = rho;
        [rho] = team.sums([dot(&s.r, &s.r)])?;
        let beta = rho / rho0;
        for k in 0..n {
            s.p[k] = s.r[k] + beta * s.p[k];
        }
    }
    // The residual of the solve, with the true product (q as scratch for A z).
    a.mul(&team.whole(&s.z)?, &mut s.q);
    let local: f64 = x.iter().zip(&s.q).map(|(xi, azi)| (xi - azi).powi(2)).sum();
    let [sum] = team.sums([local])?;
    Ok(sum.sqrt())
}

/// One outer iteration: solves with `x`, replaces `x` by the normalised solution, and
/// returns `(zeta, ||r||)`.
pub fn outer_iteration<T: Team>(
    a: &Rows,
    shift: f64,
    x: &mut [f64],
    s: &mut Scratch,
    team: &T,
) -> Result<(f64, f64), T::Error> {
    let rnorm = conj_grad(a, x, s, team)?;
    let [xz, zz] = team.sums([dot(x, &s.z), dot(&s.z, &s.z)])?;
    let zeta = shift + 1.0 / xz;
    let scale = 1.0 / zz.sqrt();
    for (xi, zi) in x.iter_mut().zip(&s.z) {
        *xi = scale * zi;
    }
    Ok((zeta, rnorm))
}
