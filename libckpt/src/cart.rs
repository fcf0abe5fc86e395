//! A Cartesian process grid, pure (no MPI): ranks laid out row-major over `dims` (the last
//! dimension varies fastest, as `MPI_Cart_create` without reordering numbers them), each
//! dimension periodic or not.

/// The shape of a Cartesian communicator: its dimensions and which of them wrap around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    dims: Vec<i32>,
    periodic: Vec<bool>,
}

impl Grid {
    /// A grid of `dims` (each at least 1) for exactly `size` ranks, `periodic[d]` saying
    /// whether dimension `d` wraps around. `Err` says what does not fit.
    pub fn new(dims: &[i32], periodic: &[bool], size: i32) -> Result<Grid, String> {
        if dims.is_empty() || dims.len() != periodic.len() {
            return Err(format!(
                "{} dimensions and {} periodicity flags: give one flag per dimension, at least \
                 one dimension",
                dims.len(),
                periodic.len()
            ));
        }
        if let Some(d) = dims.iter().find(|&&d| d < 1) {
            return Err(format!(
                "dimension of size {d} in {dims:?}: each must be at least 1"
            ));
        }
        let cells = dims
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(i64::from(d)));
        if cells != Some(i64::from(size)) {
            return Err(format!(
                "a grid of {dims:?} does not hold exactly the communicator's {size} ranks"
            ));
        }
        Ok(Grid {
            dims: dims.to_vec(),
            periodic: periodic.to_vec(),
        })
    }

    /// The dimensions.
    pub fn dims(&self) -> &[i32] {
        &self.dims
    }

    /// Whether each dimension wraps around.
    pub fn periodic(&self) -> &[bool] {
        &self.periodic
    }

    /// The coordinates of `rank` (in `0..size`).
    pub fn coords(&self, rank: i32) -> Vec<i32> {
        let mut rest = rank;
        let mut out = vec![0; self.dims.len()];
        for (c, &d) in out.iter_mut().zip(&self.dims).rev() {
            *c = rest % d;
            rest /= d;
        }
        out
    }

    /// The rank at `coords` (one per dimension): coordinates of a periodic dimension wrap
    /// around; outside a non-periodic one there is no rank (`None`). `Err` for a wrong number
    /// of coordinates.
    pub fn rank_of(&self, coords: &[i32]) -> Result<Option<i32>, String> {
        if coords.len() != self.dims.len() {
            return Err(format!(
                "{} coordinates for a grid of {} dimensions",
                coords.len(),
                self.dims.len()
            ));
        }
        let mut rank = 0i32;
        for ((&c, &d), &p) in coords.iter().zip(&self.dims).zip(&self.periodic) {
            let c = if p {
                c.rem_euclid(d)
            } else if (0..d).contains(&c) {
                c
            } else {
                return Ok(None);
            };
            rank = rank * d + c;
        }
        Ok(Some(rank))
    }

    /// `MPI_Cart_shift` of `rank`: the ranks `disp` steps before it (`source`) and after it
    /// (`dest`) along dimension `dim`; `None` past the edge of a non-periodic dimension (MPI's
    /// `MPI_PROC_NULL`). `Err` for a dimension the grid does not have.
    pub fn shift(
        &self,
        rank: i32,
        dim: usize,
        disp: i32,
    ) -> Result<(Option<i32>, Option<i32>), String> {
        if dim >= self.dims.len() {
            return Err(format!(
                "dimension {dim} of a grid of {} dimensions",
                self.dims.len()
            ));
        }
        let at = |delta: i32| {
            let mut c = self.coords(rank);
            c[dim] = c[dim].saturating_add(delta);
            self.rank_of(&c)
        };
        Ok((at(disp.saturating_neg())?, at(disp)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_row_major_and_coords_invert_them() {
        let g = Grid::new(&[2, 3], &[false, false], 6).unwrap();
        let all: Vec<Vec<i32>> = (0..6).map(|r| g.coords(r)).collect();
        assert_eq!(
            all,
            vec![
                vec![0, 0],
                vec![0, 1],
                vec![0, 2],
                vec![1, 0],
                vec![1, 1],
                vec![1, 2]
            ]
        );
        for r in 0..6 {
            assert_eq!(g.rank_of(&g.coords(r)), Ok(Some(r)));
        }
        let g3 = Grid::new(&[2, 2, 3], &[true, false, true], 12).unwrap();
        for r in 0..12 {
            assert_eq!(g3.rank_of(&g3.coords(r)), Ok(Some(r)));
        }
    }

    #[test]
    fn shift_wraps_on_periodic_dimensions_and_stops_at_the_edge_of_others() {
        let g = Grid::new(&[2, 3], &[false, true], 6).unwrap();
        // Rank 1 is (0, 1).
        let cases = [
            (1, 0, 1, (None, Some(4))),
            (1, 0, -1, (Some(4), None)),
            (1, 1, 1, (Some(0), Some(2))),
            (2, 1, 1, (Some(1), Some(0))),
            (0, 1, -1, (Some(1), Some(2))),
            (0, 1, 3, (Some(0), Some(0))),
            (4, 0, 2, (None, None)),
            (4, 0, 0, (Some(4), Some(4))),
        ];
        for (rank, dim, disp, want) in cases {
            assert_eq!(g.shift(rank, dim, disp), Ok(want), "{rank} {dim} {disp}");
        }
        assert_eq!(g.rank_of(&[0, -1]), Ok(Some(2)));
        assert_eq!(g.rank_of(&[-1, 0]), Ok(None));
        assert!(g.shift(0, 2, 1).is_err());
        assert!(g.rank_of(&[0]).is_err());
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        for (dims, periodic, size) in [
            (&[2, 2][..], &[false, false][..], 5),
            (&[2, 2], &[false], 4),
            (&[], &[], 1),
            (&[0, 4], &[false, false], 0),
            (&[-2, -2], &[false, false], 4),
            (&[65536, 65536], &[false, false], 0),
        ] {
            assert!(Grid::new(dims, periodic, size).is_err(), "{dims:?} {size}");
        }
        assert!(Grid::new(&[4], &[true], 4).is_ok());
    }
}
