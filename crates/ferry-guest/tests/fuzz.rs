//! The guest kit reads lines from the network (the request/answer service) and from the
//! console (status lines the host parses): arbitrary bytes never panic those parsers, and a
//! reply always ends in one newline. (Property tests, fixed case counts: bounded in CI.)

use ferry_guest::service::{check_token, reply, Answer};
use ferry_guest::status::ConsoleSummary;
use ferry_guest::workload::Counters;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn request_lines_get_exactly_one_reply_line(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let counters = Counters::default();
        let r = reply(&line, &counters);
        prop_assert!(r.ends_with('\n'));
        prop_assert_eq!(r.matches('\n').count(), 1);
        let _ = check_token(&line);
    }

    #[test]
    fn answer_and_console_lines_never_panic(text in ".{0,400}", bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Answer::parse(&text);
        let _ = ConsoleSummary::parse(&text);
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = Answer::parse(&lossy);
        let _ = ConsoleSummary::parse(&lossy);
    }
}
