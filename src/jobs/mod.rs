//! Job runs: a job file read and resolved (`job`), planned, rendered and filed as outputs
//! (`run`), the files it writes (`output`) and how long jobs take (`eta`).

pub mod eta;
pub mod job;
pub mod output;
pub mod run;
