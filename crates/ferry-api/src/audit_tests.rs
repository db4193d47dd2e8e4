//! The chain and checkpoints: every kind of tampering is found at the right event.

use chrono::TimeZone;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::events::{EventKind, Outcome};

fn event(id: i64) -> Event {
    Event {
        id,
        at: Utc
            .timestamp_opt(1_767_225_600 + id, 123_000_000)
            .single()
            .expect("valid time"),
        actor: "cli:alice@ops".into(),
        kind: EventKind::VmCreate,
        vm: Some(format!("web{id}")),
        host: Some("a".into()),
        migration: None,
        outcome: Outcome::Ok,
        message: format!("VM web{id} is running on a"),
        data: serde_json::json!({"n": id, "list": [1, "two", null, true, 2.5]}),
        hash: None,
    }
}

/// Sets every event's hash as the server would have.
fn chain(events: &mut [Event]) {
    let mut prev = GENESIS;
    for e in events.iter_mut() {
        prev = event_hash(&prev, e);
        e.hash = Some(to_hex(&prev));
    }
}

fn log(ids: &[i64]) -> Vec<Event> {
    let mut events: Vec<Event> = ids.iter().map(|&id| event(id)).collect();
    chain(&mut events);
    events
}

fn key() -> SigningKey {
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("generate")).expect("load")
}

fn checkpoint_at(key: &SigningKey, cp_id: i64, e: &Event) -> Checkpoint {
    let hash = from_hex::<32>(e.hash.as_deref().expect("chained")).expect("hex");
    key.checkpoint(cp_id, e.id, &hash, e.at)
}

fn first(r: &Report) -> Problem {
    r.first_problem().cloned().expect("a problem is reported")
}

#[test]
fn hex_round_trips_and_refuses_bad_input() {
    let bytes = [0u8, 1, 0xab, 0xff];
    assert_eq!(to_hex(&bytes), "0001abff");
    assert_eq!(from_hex::<4>("0001ABff"), Ok(bytes));
    assert!(from_hex::<4>("0001abf").is_err(), "odd length");
    assert!(from_hex::<4>("0001abffff").is_err(), "too long");
    assert!(from_hex::<4>("0001abfg").is_err(), "not hex");
    assert_eq!(to_hex(&GENESIS), "0".repeat(64));
}

/// The encoding is part of every stored hash: changing it would break every existing log.
/// This pins it. The value was cross-checked with an independent (Python) implementation
/// of the encoding as docs/architecture.md describes it.
#[test]
fn the_hash_of_a_known_event_never_changes() {
    let h = event_hash(&GENESIS, &event(1));
    assert_eq!(
        to_hex(&h),
        "a99d804d4681d7a1eda65d41c211b82ef5850fb605e2b8325ca408fda33dc9e9",
        "the canonical encoding changed; existing logs would no longer verify"
    );
}

#[test]
fn the_encoding_is_unambiguous() {
    let base = event(7);
    let differ = |f: &dyn Fn(&mut Event)| {
        let mut e = base.clone();
        f(&mut e);
        assert_ne!(canonical_event(&e), canonical_event(&base), "{e:?}");
    };
    // Moving a character from one field to the next changes the bytes.
    let mut a = base.clone();
    a.actor = "ab".into();
    a.kind = EventKind::parse("c");
    let mut b = base.clone();
    b.actor = "a".into();
    b.kind = EventKind::parse("bc");
    assert_ne!(canonical_event(&a), canonical_event(&b));
    // Absent and empty differ; so do a vm and the same name as host.
    differ(&|e| e.vm = Some(String::new()));
    differ(&|e| e.vm = None);
    let mut swapped = base.clone();
    std::mem::swap(&mut swapped.vm, &mut swapped.host);
    assert_ne!(canonical_event(&swapped), canonical_event(&base));
    // A number and the same digits as a string differ.
    differ(&|e| e.data = serde_json::json!({"n": "7", "list": [1, "two", null, true, 2.5]}));
    // Nesting differs from flat.
    differ(&|e| e.data = serde_json::json!([[1, 2]]));
    let mut flat = base.clone();
    flat.data = serde_json::json!([1, 2]);
    let mut nested = base.clone();
    nested.data = serde_json::json!([[1], 2]);
    assert_ne!(canonical_event(&flat), canonical_event(&nested));
}

#[test]
fn key_order_in_data_does_not_matter_and_a_json_round_trip_keeps_the_hash() {
    let mut a = event(3);
    a.data = serde_json::from_str(r#"{"b": 1, "a": {"y": 2.5, "x": [1e300, -3]}}"#).unwrap();
    let mut b = event(3);
    b.data = serde_json::from_str(r#"{"a": {"x": [1e300, -3], "y": 2.5}, "b": 1}"#).unwrap();
    assert_eq!(event_hash(&GENESIS, &a), event_hash(&GENESIS, &b));
    // What the API serves, parsed again by a client, hashes the same.
    let wire: Event = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(event_hash(&GENESIS, &wire), event_hash(&GENESIS, &a));
}

#[test]
fn the_hash_field_itself_is_not_hashed_but_the_previous_hash_is() {
    let mut e = event(1);
    let h = event_hash(&GENESIS, &e);
    e.hash = Some("ff".repeat(32));
    assert_eq!(event_hash(&GENESIS, &e), h);
    assert_ne!(event_hash(&[1; 32], &e), h);
}

#[test]
fn an_intact_log_with_checkpoints_verifies() {
    let k = key();
    let events = log(&[1, 2, 3, 5, 8]);
    let cps = vec![
        checkpoint_at(&k, 1, &events[2]),
        checkpoint_at(&k, 2, &events[4]),
    ];
    let r = verify(&events, &cps, &k.public_key());
    assert!(r.ok(), "{r:?}");
    assert_eq!(
        (r.events, r.first_event, r.last_event),
        (5, Some(1), Some(8))
    );
    assert_eq!(r.head, events[4].hash);
    assert_eq!((r.checkpoints, r.checkpoints_ok), (2, 2));
    assert_eq!(r.signed_through, Some(8));
}

#[test]
fn an_empty_log_verifies_as_empty() {
    let r = verify(&[], &[], &key().public_key());
    assert!(r.ok());
    assert_eq!((r.events, r.head, r.signed_through), (0, None, None));
}

#[test]
fn a_removed_first_event_is_found_at_the_next() {
    let events = log(&[1, 2, 3]);
    let r = verify(&events[1..], &[], &key().public_key());
    assert!(
        matches!(first(&r), Problem::HashMismatch { event: 2, .. }),
        "{r:?}"
    );
    assert_eq!(
        r.problems_total, 1,
        "only the event that lost its predecessor"
    );
}

#[test]
fn an_event_without_a_hash_is_a_problem() {
    let mut events = log(&[1, 2]);
    events[1].hash = None;
    assert_eq!(
        first(&verify(&events, &[], &key().public_key())),
        Problem::MissingHash { event: 2 }
    );
}

#[test]
fn removing_events_from_the_end_past_a_checkpoint_is_found() {
    let k = key();
    let events = log(&[1, 2, 3, 4]);
    let cps = vec![checkpoint_at(&k, 9, &events[3])];
    let r = verify(&events[..2], &cps, &k.public_key());
    assert_eq!(
        first(&r),
        Problem::CheckpointEventMissing {
            checkpoint: 9,
            event: 4
        }
    );
}

#[test]
fn a_rewritten_and_rechained_history_is_found_by_the_checkpoint_after_it() {
    let k = key();
    let mut events = log(&[1, 2, 3, 4, 5, 6]);
    let cps = vec![
        checkpoint_at(&k, 1, &events[1]),
        checkpoint_at(&k, 2, &events[5]),
    ];
    // Someone with the database (not the key) changes event 4 and recomputes every hash.
    events[3].message = "nothing happened".into();
    chain(&mut events);
    let r = verify(&events, &cps, &k.public_key());
    match first(&r) {
        Problem::CheckpointMismatch {
            checkpoint: 2,
            event: 6,
            since: Some(2),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r.signed_through,
        Some(2),
        "vouched for up to the good checkpoint"
    );
    assert!(
        first(&r).to_string().contains("after #2 up to #6"),
        "{}",
        first(&r)
    );
}

#[test]
fn a_forged_or_foreign_checkpoint_is_refused() {
    let k = key();
    let events = log(&[1, 2]);
    let mut forged = checkpoint_at(&k, 1, &events[1]);
    forged.event_id = 1; // the signature covered event 2
    let r = verify(&events, &[forged], &k.public_key());
    assert_eq!(
        first(&r),
        Problem::BadSignature {
            checkpoint: 1,
            event: 1
        }
    );
    // Signed by another key (a replaced key file), checked against the pinned one.
    let other = key();
    let r = verify(
        &events,
        &[checkpoint_at(&other, 1, &events[1])],
        &k.public_key(),
    );
    assert!(matches!(first(&r), Problem::BadSignature { .. }), "{r:?}");
    // A garbled signature is refused, not a panic.
    let mut garbled = checkpoint_at(&k, 1, &events[1]);
    garbled.signature = "zz".into();
    let r = verify(&events, &[garbled], &k.public_key());
    assert!(matches!(first(&r), Problem::BadSignature { .. }), "{r:?}");
}

#[test]
fn a_pinned_hash_catches_a_rewrite_signed_with_a_stolen_key() {
    let k = key();
    let mut events = log(&[1, 2, 3]);
    let pinned = events[1].hash.clone().expect("hash");
    events[0].actor = "someone else".into();
    chain(&mut events);
    // The thief re-signs the new head with the real key: the checkpoints all verify.
    let cps = vec![checkpoint_at(&k, 1, &events[2])];
    assert!(verify(&events, &cps, &k.public_key()).ok());
    let mut v = Verifier::new(&k.public_key(), &cps);
    v.expect(2, &pinned.to_uppercase());
    for e in &events {
        v.push(e);
    }
    let r = v.finish();
    assert!(
        matches!(
            first(&r),
            Problem::ExpectedMismatch {
                event: 2,
                chain: Some(_),
                ..
            }
        ),
        "{r:?}"
    );
    // And a pinned event that is gone.
    let mut v = Verifier::new(&k.public_key(), &[]);
    v.expect(99, &pinned);
    let r = v.finish();
    assert!(
        matches!(
            first(&r),
            Problem::ExpectedMismatch {
                event: 99,
                chain: None,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn export_lines_are_tagged_and_round_trip() {
    let k = key();
    let events = log(&[1]);
    let lines = [
        ExportRecord::Event(events[0].clone()),
        ExportRecord::Checkpoint(checkpoint_at(&k, 1, &events[0])),
        ExportRecord::PublicKey {
            public_key: k.public_key().to_hex(),
        },
    ];
    for line in &lines {
        let text = serde_json::to_string(line).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(&serde_json::from_str::<ExportRecord>(&text).unwrap(), line);
    }
    let text = serde_json::to_string(&lines[0]).unwrap();
    assert!(text.starts_with(r#"{"record":"event","id":1,"#), "{text}");
    assert!(text.contains(r#""hash":""#), "{text}");
}

#[test]
fn an_event_from_an_older_server_parses_without_a_hash() {
    let e: Event = serde_json::from_str(
        r#"{"id":1,"at":"2026-01-01T00:00:00.000Z","actor":"a","kind":"vm.create","vm":null,
            "host":null,"migration":null,"outcome":"ok","message":"m"}"#,
    )
    .unwrap();
    assert_eq!(e.hash, None);
}

#[test]
fn public_keys_parse_from_hex_only() {
    let k = key().public_key();
    assert_eq!(PublicKey::parse(&format!(" {} ", k.to_hex())), Ok(k));
    assert!(PublicKey::parse("abcd").is_err());
}

// ---- properties -------------------------------------------------------------------------

/// Strictly increasing ids with gaps (so an id can be bumped without colliding).
fn ids() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(2i64..5, 2..24).prop_map(|steps| {
        steps
            .iter()
            .scan(0i64, |id, s| {
                *id += s;
                Some(*id)
            })
            .collect()
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        (-1e9f64..1e9).prop_map(|f| serde_json::json!(f)),
        ".{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_log() -> impl Strategy<Value = Vec<Event>> {
    ids().prop_flat_map(|ids| {
        let n = ids.len();
        (
            Just(ids),
            prop::collection::vec(
                (
                    ".{0,12}",
                    prop::option::of("[a-z]{1,6}"),
                    prop::option::of(any::<u128>()),
                    json_value(),
                    0u32..1_000_000_000,
                ),
                n,
            ),
        )
            .prop_map(|(ids, fields)| {
                let mut events: Vec<Event> = ids
                    .iter()
                    .zip(fields)
                    .map(|(&id, (message, vm, migration, data, nanos))| {
                        let mut e = event(id);
                        e.message = message;
                        e.vm = vm;
                        e.migration = migration.map(Uuid::from_u128);
                        e.data = data;
                        e.at = Utc
                            .timestamp_opt(1_767_225_600 + id, nanos)
                            .single()
                            .expect("valid");
                        e
                    })
                    .collect();
                chain(&mut events);
                events
            })
    })
}

/// Changes one field of `e` so that it surely differs.
fn mutate(e: &mut Event, field: u8, salt: &str) {
    let salt = if salt.is_empty() { "x" } else { salt };
    match field % 10 {
        0 => e.id += 1,
        1 => e.at += chrono::Duration::nanoseconds(1),
        2 => e.actor.push_str(salt),
        3 => e.kind = EventKind::parse(&format!("{}{salt}", e.kind)),
        4 => {
            e.vm = match e.vm.take() {
                None => Some(salt.to_string()),
                Some(_) => None,
            }
        }
        5 => e.host = None,
        6 => {
            e.migration = match e.migration {
                None => Some(Uuid::nil()),
                Some(m) => Some(Uuid::from_u128(m.as_u128() ^ 1)),
            }
        }
        7 => {
            e.outcome = match e.outcome {
                Outcome::Ok => Outcome::Error,
                _ => Outcome::Ok,
            }
        }
        8 => e.message.push_str(salt),
        _ => e.data = serde_json::json!([e.data.take()]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn an_intact_chain_always_verifies(events in arb_log()) {
        let r = verify(&events, &[], &key().public_key());
        prop_assert!(r.ok(), "{:?}", r);
        prop_assert_eq!(r.events as usize, events.len());
    }

    #[test]
    fn any_change_to_any_field_is_found_at_that_event(
        events in arb_log(), pick in any::<prop::sample::Index>(), field in any::<u8>(),
        salt in ".{0,3}",
    ) {
        let mut events = events;
        let i = pick.index(events.len());
        mutate(&mut events[i], field, &salt);
        let r = verify(&events, &[], &key().public_key());
        let p = first(&r);
        prop_assert!(
            matches!(p, Problem::HashMismatch { event, .. } if event == events[i].id),
            "{:?}", r
        );
    }

    #[test]
    fn a_removed_event_is_found_at_the_one_after_it(
        events in arb_log(), pick in any::<prop::sample::Index>(),
    ) {
        let mut events = events;
        let i = pick.index(events.len() - 1);
        events.remove(i);
        let r = verify(&events, &[], &key().public_key());
        prop_assert!(
            matches!(first(&r), Problem::HashMismatch { event, .. } if event == events[i].id),
            "{:?}", r
        );
    }

    #[test]
    fn swapped_events_are_found(events in arb_log(), pick in any::<prop::sample::Index>()) {
        let mut events = events;
        let i = pick.index(events.len() - 1);
        let earlier = events[i].id;
        events.swap(i, i + 1);
        let r = verify(&events, &[], &key().public_key());
        prop_assert_eq!(
            first(&r),
            Problem::OutOfOrder { event: earlier, after: events[i].id }
        );
    }

    /// An inserted event is found at itself when its hash is made up, and at the event
    /// after it when the forger chained it properly.
    #[test]
    fn inserted_events_are_found(
        events in arb_log(), pick in any::<prop::sample::Index>(), chained in any::<bool>(),
    ) {
        let mut events = events;
        let i = pick.index(events.len() - 1);
        let mut forged = event(events[i].id + 1);
        forged.hash = Some(if chained {
            let prev = from_hex::<32>(events[i].hash.as_deref().unwrap_or_default()).unwrap();
            to_hex(&event_hash(&prev, &forged))
        } else {
            "ab".repeat(32)
        });
        let forged_id = forged.id;
        events.insert(i + 1, forged);
        let r = verify(&events, &[], &key().public_key());
        let expected = if chained { events[i + 2].id } else { forged_id };
        prop_assert!(
            matches!(first(&r), Problem::HashMismatch { event, .. } if event == expected),
            "{:?}", r
        );
    }

    /// Whoever rewrites any event and recomputes the chain (without the key) is caught by
    /// the first checkpoint at or after the change.
    #[test]
    fn a_rechained_rewrite_is_caught_by_the_next_checkpoint(
        events in arb_log(), pick in any::<prop::sample::Index>(), field in 1u8..10,
    ) {
        let k = key();
        let mut events = events;
        let cps: Vec<Checkpoint> = events
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 3 == 2 || *n == events.len() - 1)
            .map(|(n, e)| checkpoint_at(&k, n as i64, e))
            .collect();
        let i = pick.index(events.len());
        mutate(&mut events[i], field, "y");
        chain(&mut events);
        let r = verify(&events, &cps, &k.public_key());
        let first_cp_after = cps.iter().find(|c| c.event_id >= events[i].id).map(|c| c.event_id);
        prop_assert!(
            matches!(first(&r), Problem::CheckpointMismatch { event, .. } if Some(event) == first_cp_after),
            "{:?}", r
        );
        prop_assert!(r.signed_through.is_none_or(|s| s < events[i].id));
    }
}
