//! The load part of `ferry host show` and `ferry vm show`: now, the 1/15/60 minute
//! averages and peaks, and a sparkline of the last hour's CPU.

use ferry_api::LoadHistory;
use serde::Serialize;

use crate::exit::{CliError, CliResult};
use crate::output::print_json;

/// Prints `record` as JSON with the history under `"load"`.
pub fn print_with_load<T: Serialize>(record: &T, load: Option<&LoadHistory>) -> CliResult {
    let mut v = serde_json::to_value(record)
        .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?;
    if let (serde_json::Value::Object(map), Some(l)) = (&mut v, load) {
        map.insert(
            "load".into(),
            serde_json::to_value(l)
                .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?,
        );
    }
    print_json(&v)
}

/// The lines of the text view (label width matches the caller's).
pub fn load_lines(h: &LoadHistory, label_width: usize, cpus: Option<u32>) -> Vec<String> {
    let Some(latest) = h.latest else {
        return vec![format!(
            "{:<label_width$}no samples yet (agents report every few seconds)",
            "load"
        )];
    };
    let of = |c: f64| match cpus {
        Some(n) => format!("{c:.2} of {n} CPUs"),
        None => format!("{c:.2} CPUs"),
    };
    let mut out = vec![format!(
        "{:<label_width$}{} busy, {} MiB{}",
        "load now",
        of(latest.cpu_used),
        latest.memory_mib,
        latest
            .dirty_rate_mib_s
            .map(|d| format!(", dirtying {d:.1} MiB/s"))
            .unwrap_or_default()
    )];
    for w in h.windows.iter().filter(|w| w.samples > 0) {
        out.push(format!(
            "{:<label_width$}cpu avg {:.2} max {:.2}, memory avg {} max {} MiB ({} samples)",
            format!("  {} min", w.minutes),
            w.cpu_avg,
            w.cpu_max,
            w.memory_avg_mib,
            w.memory_max_mib,
            w.samples
        ));
    }
    out.push(format!(
        "{:<label_width$}{}",
        "  cpu, 1 h",
        sparkline(
            &h.samples.iter().map(|s| s.cpu_used).collect::<Vec<_>>(),
            60
        )
    ));
    out
}

/// At most `width` bars, each the average of its share of `values`, scaled to the max.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let per = values.len().div_ceil(width);
    let avgs: Vec<f64> = values
        .chunks(per)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let max = avgs.iter().cloned().fold(0.0f64, f64::max);
    avgs.iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_bounds_its_width() {
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(sparkline(&[0.0, 0.0], 10), "▁▁");
        assert_eq!(sparkline(&[0.0, 1.0, 2.0], 10), "▁▅█");
        let long: Vec<f64> = (0..720).map(|i| i as f64).collect();
        let s = sparkline(&long, 60);
        assert_eq!(s.chars().count(), 60);
        assert!(s.ends_with('█'));
    }
}
