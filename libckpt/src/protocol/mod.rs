//! The checkpoint protocol's decision logic, free of IO and of MPI so it can be tested
//! exhaustively and simulated. The MPI side lives in `transport`, `comm`, `commit`, `restore`.

pub mod accounting;
pub mod agree;
pub mod envelope;
pub mod msglog;
#[cfg(test)]
mod sim;
