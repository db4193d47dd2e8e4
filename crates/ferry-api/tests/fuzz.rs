//! Nothing from the network is trusted: every request body a daemon accepts, given
//! arbitrary bytes or arbitrary JSON shaped like it, is parsed and validated or refused;
//! nothing panics. (Property tests with fixed case counts: bounded time in CI.)

use ferry_api::*;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        ".{0,24}".prop_map(serde_json::Value::from),
        "[a-z0-9./:-]{0,24}".prop_map(serde_json::Value::from),
    ];
    // Keys that the request types use, so the fuzzer gets past the outer layer.
    let key = prop::sample::select(vec![
        "name",
        "host",
        "spec",
        "vm",
        "to",
        "options",
        "memory_mib",
        "vcpus",
        "boot",
        "type",
        "image",
        "kernel",
        "initrd",
        "cmdline",
        "disks",
        "nics",
        "network",
        "mac",
        "pool",
        "size_mib",
        "keep",
        "force",
        "token",
        "csr_pem",
        "role",
        "ttl_s",
        "url",
        "migration_address",
        "inventory",
        "vms",
        "mode",
        "model",
        "on",
        "streams",
        "state",
    ])
    .prop_map(str::to_string);
    leaf.prop_recursive(5, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parses `v` as `T` and, if that works, runs `check` on it; neither may panic.
fn take<T: serde::de::DeserializeOwned>(v: &serde_json::Value, check: impl Fn(&T)) {
    if let Ok(t) = serde_json::from_value::<T>(v.clone()) {
        check(&t);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn arbitrary_json_requests_are_read_and_validated_or_refused(v in json_value()) {
        take::<CreateVmRequest>(&v, |r| {
            let _ = r.spec.validate();
            if let Some(h) = &r.host {
                let _ = validate_name("host name", h);
            }
        });
        take::<MigrateRequest>(&v, |r| {
            let _ = r.options.validate();
            let _ = validate_name("VM name", &r.vm);
        });
        take::<HostRegistration>(&v, |_| {});
        take::<ResolveRequest>(&v, |_| {});
        take::<CreateDiskRequest>(&v, |r| {
            let _ = r.validate();
        });
        take::<JoinRequest>(&v, |r| {
            let _ = ferry_pki::JoinToken::parse(&r.token);
        });
        take::<JoinTokenRequest>(&v, |_| {});
        take::<CreateUserRequest>(&v, |_| {});
        take::<RenewRequest>(&v, |_| {});
        take::<BaselineSetting>(&v, |_| {});
        take::<MigrationOptions>(&v, |o| {
            let _ = o.validate();
        });
        take::<LaunchRequest>(&v, |r| {
            let _ = r.spec.validate();
        });
    }

    #[test]
    fn arbitrary_bytes_are_refused_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<CreateVmRequest>(&bytes);
        let _ = serde_json::from_slice::<MigrateRequest>(&bytes);
        let _ = serde_json::from_slice::<HostRegistration>(&bytes);
        let _ = serde_json::from_slice::<JoinRequest>(&bytes);
    }

    #[test]
    fn names_are_validated_without_panicking(s in ".{0,80}") {
        if validate_name("name", &s).is_ok() {
            prop_assert!(s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c)));
        }
    }
}
