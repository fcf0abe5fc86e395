//! Inverse power iteration with conjugate gradient, as the CG benchmark specifies: each outer
//! iteration solves `A z = x` approximately with 25 unpreconditioned CG iterations from
//! `z = 0`, then sets `zeta = shift + 1 / (x . z)` and `x = z / ||z||`.
//!
//! Vectors are distributed by rows (each rank holds the rows of its [`Rows`], possibly the
//! same rows as other ranks on a 2-D process grid); the communication goes through [`Team`],
//! so the solver runs alike on MPI ranks and in a unit test on one process.

use super::matrix::Rows;

/// CG iterations per outer iteration.
pub const CG_ITERATIONS: u64 = 25;

/// What the solver needs from the ranks.
pub trait Team {
    /// Error of a failed exchange.
    type Error;
    /// The sums over all ranks of each rank's `local` values, summed in rank order so the
    /// result is the same on every rank and in every run with as many ranks.
    fn sums<const N: usize>(&self, local: [f64; N]) -> Result<[f64; N], Self::Error>;
    /// The whole vector, from each rank's rows.
    fn whole(&self, local: &[f64]) -> Result<Vec<f64>, Self::Error>;
    /// `out = A v` for this rank's rows of `A` (`a`), `v` given by this rank's rows; the
    /// same on every rank and in every run with as many ranks.
    fn product(&self, a: &Rows, v: &[f64], out: &mut [f64]) -> Result<(), Self::Error> {
        a.mul(&self.whole(v)?, out);
        Ok(())
    }
}

/// Dot product of two local blocks, summed in index order.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One rank's part of a solve in progress: its rows of the CG vectors and how far the solve
/// got. Empty between outer iterations. All but `q` is state a checkpoint may hold.
#[derive(Debug, Default)]
pub struct Solve {
    /// CG iterations done.
    pub done: u64,
    /// The solution so far.
    pub z: Vec<f64>,
    /// The residual `x - A z`.
    pub r: Vec<f64>,
    /// The search direction.
    pub p: Vec<f64>,
    /// `r . r` over all rows.
    pub rho: f64,
    /// Scratch: `A p`.
    q: Vec<f64>,
}

impl Solve {
    /// Whether a solve is in progress.
    pub fn started(&self) -> bool {
        !self.z.is_empty()
    }

    /// Starts solving `A z = x` from `z = 0`.
    pub fn start<T: Team>(&mut self, x: &[f64], team: &T) -> Result<(), T::Error> {
        self.done = 0;
        self.z = vec![0.0; x.len()];
        self.r = x.to_vec();
        self.p = x.to_vec();
        [self.rho] = team.sums([dot(&self.r, &self.r)])?;
        Ok(())
    }

    /// One CG iteration.
    pub fn step<T: Team>(&mut self, a: &Rows, team: &T) -> Result<(), T::Error> {
        let n = self.z.len();
        self.q.resize(n, 0.0);
        team.product(a, &self.p, &mut self.q)?;
        let [pq] = team.sums([dot(&self.p, &self.q)])?;
        let alpha = self.rho / pq;
        for k in 0..n {
            self.z[k] += alpha * self.p[k];
            self.r[k] -= alpha * self.q[k];
        }
        let rho0 = self.rho;
        [self.rho] = team.sums([dot(&self.r, &self.r)])?;
        let beta = self.rho / rho0;
        for k in 0..n {
            self.p[k] = self.r[k] + beta * self.p[k];
        }
        self.done += 1;
        Ok(())
    }

    /// Ends the outer iteration: replaces `x` by the normalised solution, empties the solve,
    /// and returns `(zeta, ||x - A z||)`.
    pub fn finish<T: Team>(
        &mut self,
        a: &Rows,
        shift: f64,
        x: &mut [f64],
        team: &T,
    ) -> Result<(f64, f64), T::Error> {
        // The residual of the solve, with the true product.
        self.q.resize(x.len(), 0.0);
        team.product(a, &self.z, &mut self.q)?;
        let local: f64 = x
            .iter()
            .zip(&self.q)
            .map(|(xi, azi)| (xi - azi).powi(2))
            .sum();
        let [sum, xz, zz] = team.sums([local, dot(x, &self.z), dot(&self.z, &self.z)])?;
        let zeta = shift + 1.0 / xz;
        let scale = 1.0 / zz.sqrt();
        for (xi, zi) in x.iter_mut().zip(&self.z) {
            *xi = scale * zi;
        }
        *self = Solve::default();
        Ok((zeta, sum.sqrt()))
    }
}
