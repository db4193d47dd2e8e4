//! The memory workload: fill, rewrite at a fixed rate, verify continuously, report.
//!
//! Everything runs on one thread in one loop of 10 ms slices. Each slice first does the writes
//! that are due (so the write rate holds however slow verification is), then verifies pages
//! until the slice is over, then prints the status line if a second has passed. Being single
//! threaded, verification never races with a rewrite of the same page, so every mismatch is a
//! real fault of the memory underneath (e.g. a page lost by a migration).
//!
//! The tick and mismatch counts are also published in [`Counters`] (atomics) for the TCP
//! service, which answers from other threads.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::pattern::{self, Mismatch, PAGE_WORDS};
use crate::status::{ReadyLine, StatusLine, PREFIX};

/// Length of one scheduling slice: writes are spread over the second in slices this long.
pub const SLICE: Duration = Duration::from_millis(10);
/// Interval between status lines.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Pages verified between two clock reads (reading the clock is not free under TCG).
const VERIFY_BATCH: u64 = 8;
/// Pages filled between two clock reads during the initial fill.
const FILL_BATCH: u64 = 64;
/// At most this many MISMATCH lines per status interval; the rest are only counted.
pub const MAX_MISMATCH_LINES_PER_INTERVAL: u64 = 5;

/// Caps the mismatch lines printed per status interval and counts the rest, so a badly
/// corrupted area cannot flood the serial console (and slow the guest) while every mismatch
/// is still counted in the status line.
#[derive(Debug, Default)]
pub(crate) struct LineLimiter {
    lines_this_interval: u64,
    suppressed: u64,
}

impl LineLimiter {
    /// Whether one more line may be printed in this interval (if not, it is counted).
    pub(crate) fn admit(&mut self) -> bool {
        if self.lines_this_interval < MAX_MISMATCH_LINES_PER_INTERVAL {
            self.lines_this_interval += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Starts a new interval; returns how many lines were held back in the last one.
    pub(crate) fn next_interval(&mut self) -> u64 {
        self.lines_this_interval = 0;
        std::mem::take(&mut self.suppressed)
    }
}

/// A write backlog larger than this many seconds' worth is dropped rather than caught up: it
/// means the VM was paused (migration switch-over) or the CPU cannot keep up, and a burst of
/// catch-up writes would distort the dirty rate the host sees.
const MAX_BACKLOG_SECS: f64 = 0.5;
/// Generation of the initial fill.
pub const FIRST_GENERATION: u64 = 1;

/// Memory area, its side table of expected generations, and the counters.
pub struct Workload {
    mem: Vec<u64>,
    gens: Vec<u64>,
    pages: u64,
    stride: u64,
    next_write: u64,
    next_verify: u64,
    filled: u64,
    /// Pages written in total, including the initial fill.
    pub written: u64,
    /// Pages verified in total.
    pub verified: u64,
    /// Mismatching pages found in total.
    pub mismatches: u64,
}

/// Why the workload could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The memory area or side table could not be allocated.
    Alloc {
        /// Bytes requested.
        bytes: u128,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Alloc { bytes } => write!(
                f,
                "cannot allocate {} MiB for the memory area: give the VM more memory or lower ferry.mem_mib",
                bytes / (1024 * 1024)
            ),
        }
    }
}

impl std::error::Error for RunError {}

/// A zero-filled vector of `n` words allocated with `alloc_zeroed`, so the kernel hands out
/// untouched zero pages instead of us writing zeros first (one full pass saved under TCG), and
/// an allocation failure is an error instead of an abort.
fn zeroed_words(n: u64) -> Result<Vec<u64>, RunError> {
    let bytes = u128::from(n) * 8;
    let err = RunError::Alloc { bytes };
    let n = usize::try_from(n).map_err(|_| err.clone())?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u64>(n).map_err(|_| err.clone())?;
    // SAFETY: the layout has non-zero size; a non-null result is valid, zeroed (a valid u64)
    // memory for `n` u64s from the global allocator, which is what Vec::from_raw_parts with
    // capacity `n` expects to own and free.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<u64>();
        if ptr.is_null() {
            return Err(err);
        }
        Ok(Vec::from_raw_parts(ptr, n, n))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A step coprime with `pages`, near the golden ratio of it: stepping by it visits every page
/// exactly once per `pages` writes, and consecutive writes land far apart, so rewrites touch
/// the whole area evenly instead of sweeping it in order.
pub fn write_stride(pages: u64) -> u64 {
    if pages <= 2 {
        return 1;
    }
    let mut s = ((pages as f64) * 0.618_033_988_749_895) as u64 | 1;
    while gcd(s, pages) != 1 {
        s += 2;
    }
    s % pages
}

impl Workload {
    /// Allocates an area of `pages` 4 KiB pages (not yet filled).
    pub fn new(pages: u64) -> Result<Workload, RunError> {
        let words = pages
            .checked_mul(PAGE_WORDS as u64)
            .ok_or(RunError::Alloc { bytes: u128::MAX })?;
        Ok(Workload {
            mem: zeroed_words(words)?,
            gens: zeroed_words(pages)?,
            pages,
            stride: write_stride(pages),
            next_write: 0,
            next_verify: 0,
            filled: 0,
            written: 0,
            verified: 0,
            mismatches: 0,
        })
    }

    /// Number of pages in the area.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// True once every page holds its first generation.
    pub fn is_filled(&self) -> bool {
        self.filled == self.pages
    }

    /// Expected generation of page `index` (0 = not written yet). Panics if `index` is out of
    /// range.
    pub fn generation(&self, index: u64) -> u64 {
        self.gens[index as usize]
    }

    /// Words of page `index`; mutable so tests can inject faults. Panics if out of range.
    pub fn page_mut(&mut self, index: u64) -> &mut [u64] {
        let start = index as usize * PAGE_WORDS;
        &mut self.mem[start..start + PAGE_WORDS]
    }

    fn write_page(&mut self, index: u64, generation: u64) {
        self.gens[index as usize] = generation;
        pattern::fill_page(self.page_mut(index), index, generation);
    }

    /// Fills up to `n` more pages with the first generation; returns true when all are filled.
    pub fn fill_some(&mut self, n: u64) -> bool {
        let end = self.pages.min(self.filled.saturating_add(n));
        for index in self.filled..end {
            self.write_page(index, FIRST_GENERATION);
            self.written += 1;
        }
        self.filled = end;
        self.is_filled()
    }

    /// Rewrites the next page of the stride walk with its generation + 1; returns its index.
    /// Only meaningful once filled.
    pub fn write_next(&mut self) -> u64 {
        let index = self.next_write;
        self.next_write = (self.next_write + self.stride) % self.pages.max(1);
        let generation = self.gens[index as usize].wrapping_add(1);
        self.write_page(index, generation);
        self.written += 1;
        index
    }

    /// Verifies the next page of the sequential sweep. A mismatching page is counted, then
    /// rewritten with its expected generation so that one fault is reported once, not on every
    /// sweep.
    pub fn verify_next(&mut self) -> Option<Mismatch> {
        if self.pages == 0 {
            return None;
        }
        let index = self.next_verify;
        self.next_verify = (index + 1) % self.pages;
        let expected = self.gens[index as usize];
        let start = index as usize * PAGE_WORDS;
        let page = &self.mem[start..start + PAGE_WORDS];
        self.verified += 1;
        if pattern::page_matches(page, index, expected) {
            return None;
        }
        let m = pattern::diagnose(page, index, expected);
        self.mismatches += 1;
        self.write_page(index, expected);
        Some(m)
    }
}

/// Counters of a running workload that other threads may read (the TCP service).
#[derive(Debug, Default)]
pub struct Counters {
    tick: AtomicU64,
    mismatches: AtomicU64,
}

impl Counters {
    /// Tick of the last status line printed (0 before the first one).
    pub fn tick(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Mismatching pages found so far (updated as soon as one is found).
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Publishes a new tick.
    pub fn set_tick(&self, tick: u64) {
        self.tick.store(tick, Ordering::Relaxed);
    }

    /// Publishes a new mismatch total.
    pub fn set_mismatches(&self, mismatches: u64) {
        self.mismatches.store(mismatches, Ordering::Relaxed);
    }
}

/// Options of [`run`] that are not guest settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Return after this many status lines (for tests on the host); `None` runs forever.
    pub max_ticks: Option<u64>,
    /// Where the tick and mismatch counts are published while running.
    pub counters: Arc<Counters>,
}

/// Spreads writes evenly: how many pages (or disk blocks) are due at a given instant.
pub(crate) struct Pacer {
    pages_per_sec: f64,
    epoch: Instant,
    done: u64,
}

impl Pacer {
    /// A pacer of `per_sec` units per second starting at `epoch`.
    pub(crate) fn new(per_sec: f64, epoch: Instant) -> Pacer {
        Pacer {
            pages_per_sec: per_sec,
            epoch,
            done: 0,
        }
    }

    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        if self.pages_per_sec <= 0.0 {
            return 0;
        }
        let target = (now - self.epoch).as_secs_f64() * self.pages_per_sec;
        let due = (target as u64).saturating_sub(self.done);
        if due as f64 > self.pages_per_sec * MAX_BACKLOG_SECS + 1.0 {
            self.epoch = now;
            self.done = 0;
            return 0;
        }
        self.done += due;
        due
    }
}

/// Writes one console line. Errors are ignored: the console is the only place to report them.
pub(crate) fn emit(out: &mut dyn Write, line: &dyn fmt::Display) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Reporter<'a> {
    out: &'a mut dyn Write,
    counters: &'a Counters,
    mem_mib: u64,
    rate_mib: f64,
    tick: u64,
    next_status: Instant,
    limiter: LineLimiter,
}

impl Reporter<'_> {
    fn mismatch(&mut self, m: &Mismatch) {
        if self.limiter.admit() {
            emit(self.out, m);
        }
    }

    /// Prints a status line if one is due; returns true when `max_ticks` is reached.
    fn maybe_status(&mut self, w: &Workload, now: Instant, max_ticks: Option<u64>) -> bool {
        if now < self.next_status {
            return false;
        }
        let suppressed = self.limiter.next_interval();
        if suppressed > 0 {
            emit(
                self.out,
                &format_args!("{PREFIX} mismatch-lines-suppressed count={}", suppressed),
            );
        }
        self.tick += 1;
        let line = StatusLine {
            tick: self.tick,
            written: w.written,
            verified: w.verified,
            mismatches: w.mismatches,
            mem_mib: self.mem_mib,
            rate_mib: self.rate_mib,
        };
        emit(self.out, &line);
        self.counters.set_tick(self.tick);
        // After a long pause (VM stopped), skip the missed seconds instead of printing a burst.
        self.next_status += STATUS_INTERVAL;
        if self.next_status <= now {
            self.next_status = now + STATUS_INTERVAL;
        }
        max_ticks.is_some_and(|m| self.tick >= m)
    }
}

/// Runs the workload described by `cfg`, printing console lines to `out`. Returns only when
/// `opts.max_ticks` status lines were printed, or on error.
pub fn run(cfg: &Config, out: &mut dyn Write, opts: &RunOptions) -> Result<Workload, RunError> {
    let mut w = Workload::new(cfg.pages())?;
    emit(
        out,
        &format_args!(
            "{PREFIX} start mem_mib={} rate_mib={} pages={}",
            cfg.mem_mib,
            cfg.rate_mib,
            w.pages()
        ),
    );
    let mut rep = Reporter {
        out,
        counters: &opts.counters,
        mem_mib: cfg.mem_mib,
        rate_mib: cfg.rate_mib,
        tick: 0,
        next_status: Instant::now() + STATUS_INTERVAL,
        limiter: LineLimiter::default(),
    };

    // Status lines keep coming during the fill so the host sees progress on a slow CPU.
    while !w.fill_some(FILL_BATCH) {
        if rep.maybe_status(&w, Instant::now(), opts.max_ticks) {
            return Ok(w);
        }
    }
    emit(
        rep.out,
        &ReadyLine {
            mem_mib: cfg.mem_mib,
            rate_mib: cfg.rate_mib,
        },
    );

    let mut pacer = Pacer::new(
        cfg.rate_mib * (1024.0 * 1024.0 / pattern::PAGE_SIZE as f64),
        Instant::now(),
    );
    loop {
        let slice_start = Instant::now();
        for _ in 0..pacer.due(slice_start) {
            w.write_next();
        }
        let slice_end = slice_start + SLICE;
        let now = loop {
            for _ in 0..VERIFY_BATCH {
                if let Some(m) = w.verify_next() {
                    rep.counters.set_mismatches(w.mismatches);
                    rep.mismatch(&m);
                }
            }
            let now = Instant::now();
            if now >= slice_end {
                break now;
            }
        };
        if rep.maybe_status(&w, now, opts.max_ticks) {
            return Ok(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::MismatchKind;
    use crate::status::{ConsoleSummary, StatusLine};

    fn filled(pages: u64) -> Workload {
        let mut w = Workload::new(pages).unwrap();
        assert!(w.fill_some(u64::MAX));
        w
    }

    #[test]
    fn stride_is_coprime_and_covers_all_pages() {
        for pages in [1u64, 2, 3, 4, 10, 256, 1000, 16384, 65536] {
            let s = write_stride(pages);
            let mut seen = vec![false; pages as usize];
            let mut i = 0;
            for _ in 0..pages {
                seen[i as usize] = true;
                i = (i + s) % pages;
            }
            assert!(seen.iter().all(|&b| b), "pages={pages} stride={s}");
        }
    }

    #[test]
    fn clean_memory_verifies() {
        let mut w = filled(64);
        assert_eq!(w.written, 64);
        for _ in 0..200 {
            w.write_next();
        }
        for _ in 0..w.pages() * 2 {
            assert_eq!(w.verify_next(), None);
        }
        assert_eq!(w.verified, 128);
        assert_eq!(w.mismatches, 0);
    }

    #[test]
    fn lost_write_is_detected_once_and_repaired() {
        let mut w = filled(16);
        // Simulate a lost write: remember the page, rewrite it, put the old content back.
        let index = w.next_write;
        let old = w.page_mut(index).to_vec();
        w.write_next();
        assert_eq!(w.generation(index), 2);
        w.page_mut(index).copy_from_slice(&old);

        let found: Vec<_> = (0..16).filter_map(|_| w.verify_next()).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].page, index);
        assert_eq!(found[0].kind, MismatchKind::Stale);
        assert_eq!(found[0].found_gen, Some(1));
        assert_eq!(w.mismatches, 1);
        // Repaired: the next sweep is clean.
        assert!((0..16).all(|_| w.verify_next().is_none()));
    }

    #[test]
    fn run_prints_parseable_lines() {
        let cfg = Config {
            mem_mib: 1,
            rate_mib: 50.0,
            ..Config::default()
        };
        let mut out = Vec::new();
        let opts = RunOptions {
            max_ticks: Some(2),
            ..RunOptions::default()
        };
        let w = run(&cfg, &mut out, &opts).unwrap();
        let text = String::from_utf8(out).unwrap();
        let s = ConsoleSummary::parse(&text);
        assert!(s.ready.is_some(), "{text}");
        assert_eq!(s.status_lines, 2, "{text}");
        let last: StatusLine = s.last.unwrap();
        assert_eq!(last.tick, 2);
        assert_eq!(last.mismatches, 0);
        assert_eq!(last.written, w.written);
        assert_eq!(opts.counters.tick(), 2);
        assert_eq!(opts.counters.mismatches(), 0);
        assert!(last.verified > 0, "{text}");
        // 1 s of steady state at 50 MiB/s is ~12800 pages; allow for slow CI and the fill.
        assert!(last.written > 256 + 1000, "{text}");
        assert!(text.starts_with("FERRY-GUEST start mem_mib=1 rate_mib=50 pages=256\n"));
    }

    #[test]
    fn pacer_spreads_and_drops_backlog() {
        let epoch = Instant::now();
        let mut p = Pacer {
            pages_per_sec: 1000.0,
            epoch,
            done: 0,
        };
        assert_eq!(p.due(epoch + Duration::from_millis(10)), 10);
        assert_eq!(p.due(epoch + Duration::from_millis(25)), 15);
        // A 5 s pause: the backlog is dropped, pacing restarts from then.
        let later = epoch + Duration::from_secs(5);
        assert_eq!(p.due(later), 0);
        assert_eq!(p.due(later + Duration::from_millis(10)), 10);
        let mut zero = Pacer {
            pages_per_sec: 0.0,
            epoch,
            done: 0,
        };
        assert_eq!(zero.due(later), 0);
    }
}
