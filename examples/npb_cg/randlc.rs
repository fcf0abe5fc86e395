//! The NPB pseudo-random number generator: the linear congruential sequence
//! `x(k+1) = a * x(k) mod 2^46`, returned as `x(k+1) / 2^46` in `(0, 1)`.
//!
//! The benchmark specifies it in double precision arithmetic that is exact by construction;
//! here the same integers are computed with 64-bit integer arithmetic (the product modulo
//! 2^64, then modulo 2^46, which divides 2^64), so every value is bit-for-bit the specified one.

/// The multiplier `a = 5^13`.
pub const AMULT: u64 = 1_220_703_125;
/// The seed of CG's matrix generator.
pub const SEED: u64 = 314_159_265;

const MOD_MASK: u64 = (1 << 46) - 1;
/// `2^-46`, exact.
const SCALE: f64 = 1.0 / (1u64 << 46) as f64;

/// One stream of the generator, holding `x(k)`.
#[derive(Debug, Clone)]
pub struct Randlc {
    x: u64,
}

impl Randlc {
    /// A stream starting from `seed` (below 2^46).
    pub fn new(seed: u64) -> Randlc {
        Randlc { x: seed & MOD_MASK }
    }

    /// Advances the stream by one and returns the new value scaled into `(0, 1)`.
    pub fn next(&mut self) -> f64 {
        self.x = self.x.wrapping_mul(AMULT) & MOD_MASK;
        self.x as f64 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequence is the integer recurrence, checked against 128-bit arithmetic.
    #[test]
    fn matches_the_recurrence_modulo_2_pow_46() {
        let mut r = Randlc::new(SEED);
        let mut x = SEED as u128;
        for _ in 0..10_000 {
            x = (x * AMULT as u128) % (1u128 << 46);
            let v = r.next();
            assert_eq!(v, x as f64 / (1u128 << 46) as f64);
            assert!(v > 0.0 && v < 1.0);
        }
    }
}
