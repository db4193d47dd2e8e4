//! What QEMU sends is not trusted: arbitrary bytes, and arbitrary JSON shaped like QMP,
//! never panic the parsers; they are either read or refused with a reason. (Property
//! tests with a fixed case count, so CI runs them in bounded time.)

use proptest::prelude::*;

use crate::client::{parse_greeting, parse_message, read_bounded_line};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("return".to_string()),
                    Just("error".to_string()),
                    Just("event".to_string()),
                    Just("id".to_string()),
                    Just("QMP".to_string()),
                    Just("data".to_string()),
                    Just("timestamp".to_string()),
                    "[a-z_-]{1,10}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_message_parsers(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_message(&bytes);
        let _ = parse_greeting(&bytes);
    }

    #[test]
    fn qmp_shaped_json_is_read_or_refused(v in json_value()) {
        let line = serde_json::to_vec(&v).unwrap();
        let _ = parse_message(&line);
        let _ = parse_greeting(&line);
    }

    #[test]
    fn lines_never_exceed_the_bound(bytes in prop::collection::vec(any::<u8>(), 0..2048), max in 1u64..512) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut r = tokio::io::BufReader::new(&bytes[..]);
            let mut line = Vec::new();
            if let Ok(n) = read_bounded_line(&mut r, &mut line, max).await {
                prop_assert!(n as u64 <= max && line.len() as u64 <= max);
            }
            Ok(())
        })?;
    }
}
