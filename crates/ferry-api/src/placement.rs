//! Placement rules and the explanation of a placement decision.

use serde::{Deserialize, Serialize};

/// How hard a rule binds: `must` is never broken; `should` costs score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    Must,
    Should,
}

/// What a rule asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RuleKind {
    /// Keep these VMs on one host.
    Affinity { vms: Vec<String> },
    /// Keep these VMs on different hosts.
    AntiAffinity { vms: Vec<String> },
    /// These VMs run on these hosts (`on`), or never on them (`on: false`).
    VmHost {
        vms: Vec<String>,
        hosts: Vec<String>,
        on: bool,
    },
}

/// A placement rule (`ferry rule add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub strength: Strength,
    #[serde(flatten)]
    pub kind: RuleKind,
}

impl Rule {
    /// The VMs the rule names.
    pub fn vms(&self) -> &[String] {
        match &self.kind {
            RuleKind::Affinity { vms }
            | RuleKind::AntiAffinity { vms }
            | RuleKind::VmHost { vms, .. } => vms,
        }
    }

    pub fn validate(&self) -> Result<(), crate::ApiError> {
        crate::validate_name("rule name", &self.name)?;
        let vms = self.vms();
        let min = match self.kind {
            RuleKind::VmHost { .. } => 1,
            _ => 2,
        };
        if vms.len() < min || vms.len() > 1000 {
            return Err(crate::ApiError::bad_request(format!(
                "rule {} names {} VMs; it needs {min} to 1000",
                self.name,
                vms.len()
            )));
        }
        for v in vms {
            crate::validate_name("VM name", v)?;
        }
        if let RuleKind::VmHost { hosts, .. } = &self.kind {
            if hosts.is_empty() || hosts.len() > 1000 {
                return Err(crate::ApiError::bad_request(format!(
                    "rule {} names {} hosts; it needs 1 to 1000",
                    self.name,
                    hosts.len()
                )));
            }
            for h in hosts {
                crate::validate_name("host name", h)?;
            }
        }
        Ok(())
    }
}

/// `POST /v1/placement`: where would this VM go? Either an existing VM (a migration
/// without `--to`) or a new spec (a create without `--host`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    #[serde(default)]
    pub vm: Option<String>,
    #[serde(default)]
    pub spec: Option<crate::VmSpec>,
}

/// One host considered, its score and why it lost (or won).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    pub host: String,
    /// Higher is better; None when the host cannot take the VM at all.
    pub score: Option<f64>,
    /// Why the host cannot take the VM, or the `should` rules it breaks.
    pub reasons: Vec<String>,
}

/// A placement decision with every candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementReport {
    pub vm: String,
    pub chosen: Option<String>,
    pub runner_up: Option<String>,
    pub candidates: Vec<CandidateReport>,
}
