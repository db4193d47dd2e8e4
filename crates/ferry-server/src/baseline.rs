//! The cluster CPU baseline (what VMware calls EVC): one named CPU model every host can
//! run, given to new VMs by default so they can move anywhere in the cluster.
//!
//! Pure functions of the hosts' inventories: which models every host runs with no missing
//! feature, and the best of them by a fixed ranking (newest generations first).

pub use ferry_api::BaselineSetting;
use ferry_api::HostInventory;

/// The `cpu_model` value that means "the cluster baseline" in a new VM's spec.
pub const BASELINE_KEYWORD: &str = "baseline";

/// Named x86 models from most to least capable, by generation, Intel and AMD interleaved.
/// Only models listed here are chosen as a baseline (host passthrough and `max` never are).
pub const RANKING: &[&str] = &[
    "GraniteRapids",
    "SapphireRapids",
    "EPYC-Genoa",
    "Icelake-Server",
    "EPYC-Milan",
    "Cooperlake",
    "Cascadelake-Server",
    "EPYC-Rome",
    "Skylake-Server",
    "Skylake-Client",
    "EPYC",
    "Broadwell",
    "Haswell",
    "Opteron_G5",
    "IvyBridge",
    "Opteron_G4",
    "SandyBridge",
    "Opteron_G3",
    "Westmere",
    "Nehalem",
    "Opteron_G2",
    "Penryn",
    "Opteron_G1",
    "Conroe",
    "qemu64",
];

/// Whether a host runs `model` with every feature.
pub fn runs(inv: &HostInventory, model: &str) -> bool {
    inv.cpu_model(model)
        .is_some_and(|m| m.unavailable_features.is_empty())
}

/// The best ranked model every host can run; None if there are no hosts or none in common.
pub fn best_common_model<'a>(
    hosts: impl IntoIterator<Item = &'a HostInventory> + Clone,
) -> Option<&'static str> {
    // No hosts: no baseline (rather than the first model, vacuously run by all).
    hosts.clone().into_iter().next()?;
    RANKING
        .iter()
        .copied()
        .find(|m| hosts.clone().into_iter().all(|h| runs(h, m)))
}

/// The features `host` lacks for `model` (None: it does not know the model at all).
pub fn missing_features(inv: &HostInventory, model: &str) -> Option<Vec<String>> {
    inv.cpu_model(model).map(|m| m.unavailable_features.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CpuModelAvailability;

    fn host(models: &[(&str, &[&str])]) -> HostInventory {
        HostInventory {
            cpu_models: models
                .iter()
                .map(|(n, missing)| CpuModelAvailability {
                    name: n.to_string(),
                    unavailable_features: missing.iter().map(|f| f.to_string()).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_best_model_every_host_runs_is_chosen() {
        let new = host(&[
            ("Skylake-Server", &[]),
            ("Westmere", &[]),
            ("Nehalem", &[]),
            ("qemu64", &[]),
        ]);
        let old = host(&[
            ("Skylake-Server", &["avx512f"]),
            ("Westmere", &[]),
            ("Nehalem", &[]),
            ("qemu64", &[]),
        ]);
        assert_eq!(best_common_model([&new]), Some("Skylake-Server"));
        assert_eq!(best_common_model([&new, &old]), Some("Westmere"));
        assert_eq!(
            best_common_model(std::iter::empty::<&HostInventory>()),
            None
        );
        let alien = host(&[("max", &[])]);
        assert_eq!(best_common_model([&new, &alien]), None);
        assert_eq!(
            missing_features(&old, "Skylake-Server"),
            Some(vec!["avx512f".into()])
        );
        assert_eq!(missing_features(&old, "EPYC"), None);
    }

    #[test]
    fn the_ranking_has_no_duplicates_and_ends_with_the_universal_model() {
        let mut seen = std::collections::HashSet::new();
        assert!(RANKING.iter().all(|m| seen.insert(*m)));
        assert_eq!(RANKING.last(), Some(&"qemu64"));
    }

    #[test]
    fn the_setting_round_trips() {
        for s in [
            BaselineSetting::Auto,
            BaselineSetting::Fixed("Nehalem".into()),
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<BaselineSetting>(&text).unwrap(), s);
        }
    }
}
