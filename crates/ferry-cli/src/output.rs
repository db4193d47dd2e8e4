//! Printing: aligned tables for people, JSON for scripts, human sizes and durations. The
//! shared part is `ferry_bench::console` (the benchmarks print the same way); what only
//! the operator commands need is here.

use serde::Serialize;

use crate::exit::CliError;

pub use ferry_bench::console::{bytes, millis, print_table, rate};

pub fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    Ok(ferry_bench::console::print_json(value)?)
}

pub fn ago(t: chrono::DateTime<chrono::Utc>) -> String {
    let secs = chrono::Utc::now()
        .signed_duration_since(t)
        .num_seconds()
        .max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}
