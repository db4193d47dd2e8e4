use super::*;
use chrono::TimeZone;
use proptest::prelude::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn cron(expr: &str) -> Timing {
    Timing::Cron(Box::new(parse_cron(expr).unwrap()))
}

#[test]
fn sunday_at_two_is_read_in_utc() {
    let c = cron("0 2 * * SUN");
    // Thursday 3 December 2026, 09:00 UTC: the next is Sunday the 6th at 02:00 UTC.
    let next = c.next_after(t("2026-12-03T09:00:00Z")).unwrap();
    assert_eq!(next, t("2026-12-06T02:00:00Z"));
    // Strictly after: at the fire time itself, the next is a week later.
    assert_eq!(
        c.next_after(next).unwrap(),
        t("2026-12-13T02:00:00Z"),
        "strictly after"
    );
    assert_eq!(c.latest_upto(next).unwrap(), next, "inclusive");
    assert_eq!(
        c.latest_upto(t("2026-12-06T01:59:59Z")).unwrap(),
        t("2026-11-29T02:00:00Z")
    );
    assert_eq!(
        cron("@weekly").next_after(t("2026-12-03T09:00:00Z")),
        Some(t("2026-12-06T00:00:00Z"))
    );
}

#[test]
fn bad_expressions_are_refused_with_the_reason() {
    for (bad, says) in [
        ("0 2 * *", "4 field"),
        ("* * * * * *", "6 field"),
        ("", "0 field"),
        ("61 * * * *", "not valid"),
        ("0 25 * * *", "not valid"),
        ("0 2 * * FUNDAY", "not valid"),
        ("a b c d e", "not valid"),
    ] {
        let err = parse_cron(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} parsed"));
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn an_expression_that_never_fires_has_no_next_time() {
    let started = std::time::Instant::now();
    let c = cron("0 0 30 2 *");
    assert_eq!(c.next_after(t("2026-12-03T09:00:00Z")), None);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "found out in {:?}",
        started.elapsed()
    );
}

#[test]
fn a_one_time_schedule_fires_once_then_is_done() {
    let at = t("2026-12-06T02:00:00Z");
    let timing = Timing::At(at);
    let created = t("2026-12-01T00:00:00Z");
    let run = MissedRule::RunOnce;
    // Before: wait for it.
    assert_eq!(
        decide(&timing, run, created, created, t("2026-12-05T00:00:00Z")),
        Decision::Wait(Some(at))
    );
    // Its time passes while the server runs: fire, on time.
    let now = at + Duration::seconds(1);
    assert_eq!(
        decide(&timing, run, created, created, now),
        Decision::Fire {
            fire_at: at,
            missed: 0
        }
    );
    // Once dealt with, never again.
    assert_eq!(decide(&timing, run, at, created, now), Decision::Wait(None));
}

#[test]
fn a_time_passed_while_down_runs_once_or_is_skipped_by_the_rule() {
    let at = t("2026-12-06T02:00:00Z");
    let timing = Timing::At(at);
    let created = t("2026-12-01T00:00:00Z");
    let started = at + Duration::hours(1);
    let now = started + Duration::seconds(1);
    assert_eq!(
        decide(&timing, MissedRule::RunOnce, created, started, now),
        Decision::Fire {
            fire_at: at,
            missed: 1
        }
    );
    assert_eq!(
        decide(&timing, MissedRule::Skip, created, started, now),
        Decision::Skip {
            fire_at: at,
            count: 1,
            next: None
        }
    );
}

#[test]
fn many_missed_cron_times_run_once_for_the_latest() {
    let timing = cron("0 * * * *");
    let since = t("2026-12-06T02:00:00Z");
    // Down from 02:30 to 07:10: 03:00 .. 07:00 were missed (five).
    let started = t("2026-12-06T07:10:00Z");
    assert_eq!(
        decide(&timing, MissedRule::RunOnce, since, started, started),
        Decision::Fire {
            fire_at: t("2026-12-06T07:00:00Z"),
            missed: 5
        }
    );
    assert_eq!(
        decide(&timing, MissedRule::Skip, since, started, started),
        Decision::Skip {
            fire_at: t("2026-12-06T07:00:00Z"),
            count: 5,
            next: Some(t("2026-12-06T08:00:00Z"))
        }
    );
    // Skipped: it waits for 08:00.
    assert_eq!(
        decide(
            &timing,
            MissedRule::Skip,
            t("2026-12-06T07:00:00Z"),
            started,
            started
        ),
        Decision::Wait(Some(t("2026-12-06T08:00:00Z")))
    );
    // A year down, every minute: counted up to the bound, still one run.
    let every = cron("* * * * *");
    match decide(
        &every,
        MissedRule::RunOnce,
        since,
        since + Duration::days(365),
        since + Duration::days(365),
    ) {
        Decision::Fire { fire_at, missed } => {
            assert_eq!(fire_at, since + Duration::days(365));
            assert_eq!(missed, MAX_COUNTED);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_loop_sleeps_until_the_next_time_but_never_past_its_tick() {
    let now = t("2026-12-06T02:00:00Z");
    let tick = Duration::seconds(5);
    assert_eq!(
        sleep_for(Some(now + Duration::seconds(2)), now, tick),
        Duration::seconds(2)
    );
    assert_eq!(sleep_for(Some(now + Duration::hours(2)), now, tick), tick);
    assert_eq!(sleep_for(Some(now), now, tick), Duration::zero());
    assert_eq!(sleep_for(None, now, tick), tick);
}

// ---- properties -------------------------------------------------------------------

/// Cron expressions that fire at least once a week (so a brute-force scan stays short).
fn weekly_cron() -> impl Strategy<Value = String> {
    let minute = prop_oneof![
        Just("*".to_string()),
        (2u32..30).prop_map(|k| format!("*/{k}")),
        (0u32..60).prop_map(|m| m.to_string()),
        (0u32..30, 30u32..60).prop_map(|(a, b)| format!("{a},{b}")),
        (0u32..30, 30u32..60).prop_map(|(a, b)| format!("{a}-{b}")),
    ];
    let hour = prop_oneof![
        Just("*".to_string()),
        (0u32..24).prop_map(|h| h.to_string()),
        (2u32..12).prop_map(|k| format!("*/{k}")),
        (0u32..12, 12u32..24).prop_map(|(a, b)| format!("{a}-{b}")),
    ];
    let dow = prop_oneof![
        Just("*"),
        Just("SUN"),
        Just("MON-FRI"),
        Just("1,3,5"),
        Just("SAT,SUN")
    ];
    (minute, hour, dow).prop_map(|(m, h, d)| format!("{m} {h} * * {d}"))
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
}

/// Every fire time in (from, to], by looking at each minute.
fn brute(c: &Cron, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    // The first whole minute after `from`.
    let secs = from.timestamp();
    let mut m = Utc
        .timestamp_opt(secs - secs.rem_euclid(60) + 60, 0)
        .single()
        .unwrap();
    while m <= to {
        if c.is_time_matching(&m).unwrap() {
            out.push(m);
        }
        m += Duration::minutes(1);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The next time is the first matching minute after `t`; the latest at or before a
    /// time is the last matching one; `due` counts what a scan counts.
    #[test]
    fn cron_times_agree_with_a_minute_by_minute_scan(
        expr in weekly_cron(),
        offset in 0i64..(14 * 24 * 3600),
        window in 0i64..(2 * 24 * 3600),
    ) {
        let c = parse_cron(&expr).unwrap();
        let timing = Timing::Cron(Box::new(c.clone()));
        let from = base() + Duration::seconds(offset);
        let next = timing.next_after(from).expect("fires weekly");
        prop_assert!(next > from);
        let scan = brute(&c, from, from + Duration::days(8));
        prop_assert_eq!(Some(&next), scan.first(), "{}", expr);
        prop_assert_eq!(timing.latest_upto(next), Some(next));
        let to = from + Duration::seconds(window);
        let in_window: Vec<_> = scan.iter().copied().filter(|x| *x <= to).collect();
        match timing.due(from, to) {
            None => prop_assert!(in_window.is_empty(), "{} {:?}", expr, in_window),
            Some((latest, n)) => {
                prop_assert_eq!(Some(&latest), in_window.last());
                prop_assert_eq!(n, in_window.len() as u64);
            }
        }
    }

    /// A server that runs and stops by turns, its loop looking every 30 s while it runs:
    /// every fire time seen while running runs once, at the first look after it; the fire
    /// times of each stop run once (for the latest of them) at the next start with
    /// run-once, and never with skip; no fire time ever runs twice.
    #[test]
    fn up_and_down_every_fire_time_runs_at_most_once_and_missed_ones_follow_the_rule(
        expr in prop::option::of(weekly_cron()),
        at_min in 1i64..(3 * 24 * 60),
        periods in prop::collection::vec((0i64..180, 0i64..900), 1..5),
        skip in any::<bool>(),
    ) {
        let timing = match &expr {
            Some(e) => Timing::Cron(Box::new(parse_cron(e).unwrap())),
            None => Timing::At(base() + Duration::minutes(at_min) + Duration::seconds(7)),
        };
        let rule = if skip { MissedRule::Skip } else { MissedRule::RunOnce };
        let tick = Duration::seconds(30);
        let created = base();
        let mut since = created;
        let mut now = created;
        let mut runs: Vec<(DateTime<Utc>, DateTime<Utc>, u64)> = Vec::new();
        let mut skips: Vec<(DateTime<Utc>, u64)> = Vec::new();
        // (start, last look) of each stretch the server ran.
        let mut ups = Vec::new();
        for (up, down) in &periods {
            let started = now;
            let end = started + Duration::minutes(*up);
            let mut look = started;
            let mut last = started;
            while look < end || look == started {
                let mut decisions = 0;
                loop {
                    decisions += 1;
                    prop_assert!(decisions <= 3, "the loop keeps deciding");
                    match decide(&timing, rule, since, started, look) {
                        Decision::Fire { fire_at, missed } => {
                            prop_assert!(fire_at > since && fire_at <= look);
                            runs.push((fire_at, look, missed));
                            since = fire_at;
                        }
                        Decision::Skip { fire_at, count, .. } => {
                            prop_assert_eq!(rule, MissedRule::Skip);
                            prop_assert!(fire_at > since && fire_at <= started);
                            skips.push((fire_at, count));
                            since = fire_at;
                        }
                        Decision::Wait(next) => {
                            if let Some(n) = next {
                                prop_assert!(n > look);
                            }
                            break;
                        }
                    }
                }
                last = look;
                look += tick;
            }
            ups.push((started, last));
            now = end.max(started) + Duration::minutes(*down);
        }
        // Every fire time up to the last look, classified.
        let horizon = ups.last().map(|u| u.1).unwrap_or(created);
        let mut all = Vec::new();
        let mut t = created;
        while let Some(n) = timing.next_after(t) {
            if n > horizon {
                break;
            }
            all.push(n);
            t = n;
        }
        prop_assert!(
            runs.windows(2).all(|w| w[0].0 < w[1].0),
            "a fire time ran twice, or out of order: {:?}", runs
        );
        let mut expected_runs = 0;
        for (i, (start, last)) in ups.iter().enumerate() {
            // Seen while running: runs at the first look at or after it.
            for f in all.iter().filter(|f| *f > start && *f <= last) {
                expected_runs += 1;
                let r = runs.iter().find(|r| r.0 == *f);
                prop_assert!(r.is_some(), "on-time fire {} never ran", f);
                let r = r.unwrap();
                prop_assert!(r.1 >= *f && r.1 - *f < tick, "{} ran at {}", f, r.1);
                prop_assert_eq!(r.2, 0);
            }
            // Passed while down (before this start, after the previous stretch's last look).
            let prev_last = if i == 0 { created } else { ups[i - 1].1 };
            let missed: Vec<_> = all.iter().copied().filter(|f| *f > prev_last && f <= start).collect();
            if let Some(latest) = missed.last() {
                let ran: Vec<_> = runs.iter().filter(|r| missed.contains(&r.0)).collect();
                match rule {
                    MissedRule::RunOnce => {
                        expected_runs += 1;
                        prop_assert_eq!(ran.len(), 1, "missed {:?} ran {:?}", missed, ran);
                        prop_assert_eq!(ran[0].0, *latest);
                        prop_assert_eq!(ran[0].1, *start, "it runs at start");
                        prop_assert_eq!(ran[0].2, missed.len() as u64);
                    }
                    MissedRule::Skip => {
                        prop_assert!(ran.is_empty(), "skipped times ran: {:?}", ran);
                        prop_assert!(skips.contains(&(*latest, missed.len() as u64)),
                            "{:?} not in {:?}", (latest, missed.len()), skips);
                    }
                }
            }
        }
        prop_assert_eq!(runs.len(), expected_runs, "runs {:?}", runs);
    }
}
