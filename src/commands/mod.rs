//! The command line: its arguments (`cli`), and the operator's commands other than the
//! server: `explain` (what the guards would do with a described request) and `check` /
//! `status` (`ops`).

pub mod cli;
pub mod explain;
pub mod ops;
