//! The checkpoint protocol's decision logic, free of IO and of MPI so it can be tested
//! exhaustively and simulated. The MPI side lives in `transport`, `comm`, `commit`, `restore`.

pub mod agree;
pub mod quiesce;
#[cfg(test)]
mod sim;
