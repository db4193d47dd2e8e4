//! Pre-migration checks: what the server proves before anything moves.

use serde::{Deserialize, Serialize};

/// A check's outcome. `Fail` refuses the migration; `Warn` refuses it unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// One check: a stable name, its verdict, one sentence with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    pub message: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl CheckResult {
    pub fn new(name: &str, verdict: Verdict, message: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            verdict,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }
    pub fn with_data(mut self, data: serde_json::Value) -> CheckResult {
        self.data = data;
        self
    }
}

/// Every check for one proposed migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    pub vm: String,
    pub source: String,
    pub destination: String,
    pub checks: Vec<CheckResult>,
    /// How long the checks took, ms.
    pub elapsed_ms: u64,
}

impl CheckReport {
    /// The worst verdict (Pass for an empty report).
    pub fn verdict(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Pass)
    }
    pub fn with(&self, verdict: Verdict) -> Vec<&CheckResult> {
        self.checks
            .iter()
            .filter(|c| c.verdict == verdict)
            .collect()
    }
    /// `name: message` of each check with `verdict`, joined for an error message.
    pub fn summary(&self, verdict: Verdict) -> String {
        self.with(verdict)
            .iter()
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `POST /v1/probe/listen` (destination).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeListenRequest {
    /// The source host: with TLS, the listener admits only its certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
}

/// Destination: listen once on the migration address for a reachability and bandwidth
/// probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeListenResponse {
    /// Where the probe must connect, `ADDR:PORT` as the source reaches it.
    pub advertised: String,
}

/// Source: connect to `target` and send `bytes` (or for at most `max_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSendRequest {
    pub target: String,
    /// The destination host: with TLS, the probe connects only to its certificate.
    #[serde(default)]
    pub peer_host: Option<String>,
    pub bytes: u64,
    pub max_ms: u64,
    /// Give up connecting after this long.
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSendResponse {
    pub connect_ms: f64,
    pub bytes_sent: u64,
    pub elapsed_ms: f64,
    /// Achieved rate, bytes per second (a short probe under-estimates a long stream).
    pub bytes_per_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_verdict_wins() {
        let mut r = CheckReport {
            vm: "v".into(),
            source: "a".into(),
            destination: "b".into(),
            checks: vec![],
            elapsed_ms: 0,
        };
        assert_eq!(r.verdict(), Verdict::Pass);
        r.checks.push(CheckResult::new("x", Verdict::Warn, "w"));
        r.checks.push(CheckResult::new("y", Verdict::Pass, "p"));
        assert_eq!(r.verdict(), Verdict::Warn);
        r.checks.push(CheckResult::new("z", Verdict::Fail, "f"));
        assert_eq!(r.verdict(), Verdict::Fail);
        assert_eq!(r.summary(Verdict::Fail), "z: f");
        assert_eq!(
            serde_json::to_value(Verdict::Warn).unwrap(),
            serde_json::json!("warn")
        );
    }
}
