//! How jobs are started. Only Open MPI's `mpirun` for now; an `srun` backend would be a
//! sibling with the same two duties (build the command, explain a failure), and a trait
//! between them is worth adding when it exists.

pub mod mpirun;
