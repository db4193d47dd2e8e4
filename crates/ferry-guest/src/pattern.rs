//! Self-verifying page pattern.
//!
//! Every 4 KiB page holds a deterministic function of `(page index, generation)`:
//!
//! | word   | content                                                  |
//! |--------|----------------------------------------------------------|
//! | 0      | [`MAGIC`]                                                |
//! | 1      | page index                                               |
//! | 2      | generation                                               |
//! | 3..512 | xorshift64 stream seeded from `(index, generation)`      |
//!
//! Because the body is seeded from both values, a page is *internally consistent* only for the
//! `(index, generation)` pair in its header. That lets the checker tell apart a torn page (header
//! and body disagree), a misplaced page (consistent, but for another index) and a stale page
//! (consistent, but an older generation than the side table expects: a lost write).
//!
//! The hot paths work on `u64` words, do not allocate and do not branch per word, because the
//! guest runs under TCG emulation where every instruction is expensive.

use std::fmt;

/// Size of one page in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Size of one page in `u64` words.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;
/// First word of every written page ("FERRYPG1" in ASCII, big-endian reading).
pub const MAGIC: u64 = 0x4645_5252_5950_4731;
/// Number of header words before the xorshift body.
pub const HEADER_WORDS: usize = 3;

/// Seed of the body stream; never zero (xorshift64 would stay at zero forever).
#[inline]
fn seed(index: u64, generation: u64) -> u64 {
    // splitmix64 finaliser over a mix of both inputs: neighbouring indexes and generations
    // give unrelated streams, so a page copied from its neighbour is not mistaken for valid.
    let mut z = index
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(generation.rotate_left(32) ^ 0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if z == 0 {
        0x2545_F491_4F6C_DD1D
    } else {
        z
    }
}

#[inline(always)]
fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Writes the pattern for `(index, generation)` into `page` (exactly [`PAGE_WORDS`] words).
#[inline]
pub fn fill_page(page: &mut [u64], index: u64, generation: u64) {
    debug_assert_eq!(page.len(), PAGE_WORDS);
    let (header, body) = page.split_at_mut(HEADER_WORDS);
    header[0] = MAGIC;
    header[1] = index;
    header[2] = generation;
    let mut x = seed(index, generation);
    for w in body {
        x = xorshift(x);
        *w = x;
    }
}

/// True when `page` holds exactly the pattern for `(index, generation)`.
///
/// This is the fast path: one pass, differences OR-ed into an accumulator instead of a branch
/// per word.
#[inline]
pub fn page_matches(page: &[u64], index: u64, generation: u64) -> bool {
    debug_assert_eq!(page.len(), PAGE_WORDS);
    let mut diff = (page[0] ^ MAGIC) | (page[1] ^ index) | (page[2] ^ generation);
    let mut x = seed(index, generation);
    for &w in &page[HEADER_WORDS..] {
        x = xorshift(x);
        diff |= w ^ x;
    }
    diff == 0
}

/// Number of words of `page` that differ from the pattern of `(index, generation)`, and the
/// position of the first one.
fn count_bad_words(page: &[u64], index: u64, generation: u64) -> (usize, Option<usize>) {
    let mut expected = [0u64; PAGE_WORDS];
    fill_page(&mut expected, index, generation);
    let mut bad = 0;
    let mut first = None;
    for (i, (&got, &want)) in page.iter().zip(expected.iter()).enumerate() {
        if got != want {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    (bad, first)
}

/// What a page that failed verification looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// Consistent page of this index but an older generation: a write was lost.
    Stale,
    /// Consistent page of this index but a newer generation than expected (the side table lost
    /// an update, or memory came from elsewhere).
    Future,
    /// Consistent page, but of another index: memory was moved or mapped wrongly.
    Misplaced,
    /// Valid magic, but the body does not match the header: partially written or corrupted.
    Torn,
    /// No magic: the page was never written, zeroed, or overwritten by something else.
    Garbage,
}

impl MismatchKind {
    /// Stable lower-case name used on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::Stale => "stale",
            MismatchKind::Future => "future",
            MismatchKind::Misplaced => "misplaced",
            MismatchKind::Torn => "torn",
            MismatchKind::Garbage => "garbage",
        }
    }
}

impl fmt::Display for MismatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Diagnosis of one page that failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Index of the page that was checked.
    pub page: u64,
    /// Generation the side table expected.
    pub expected_gen: u64,
    /// Generation in the page header, if the header has the magic.
    pub found_gen: Option<u64>,
    /// Index in the page header, if the header has the magic.
    pub found_page: Option<u64>,
    /// Classification of the damage.
    pub kind: MismatchKind,
    /// Words that differ from the expected pattern (out of [`PAGE_WORDS`]).
    pub bad_words: usize,
    /// First differing word.
    pub first_bad_word: Option<usize>,
}

impl fmt::Display for Mismatch {
    /// The console line, e.g.
    /// `FERRY-GUEST MISMATCH page=7 expected_gen=3 found_gen=2 found_page=7 kind=stale bad_words=510 first_bad_word=2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} page={} expected_gen={} found_gen=",
            crate::status::MISMATCH_PREFIX,
            self.page,
            self.expected_gen
        )?;
        match self.found_gen {
            Some(g) => write!(f, "{g}")?,
            None => f.write_str("?")?,
        }
        f.write_str(" found_page=")?;
        match self.found_page {
            Some(p) => write!(f, "{p}")?,
            None => f.write_str("?")?,
        }
        write!(f, " kind={} bad_words={}", self.kind, self.bad_words)?;
        if let Some(w) = self.first_bad_word {
            write!(f, " first_bad_word={w}")?;
        }
        Ok(())
    }
}

/// Checks `page` against `(index, expected_gen)`; on failure, works out what it holds instead.
pub fn verify_page(page: &[u64], index: u64, expected_gen: u64) -> Result<(), Mismatch> {
    if page_matches(page, index, expected_gen) {
        return Ok(());
    }
    Err(diagnose(page, index, expected_gen))
}

/// Slow path of [`verify_page`]: classifies a page known not to match.
pub fn diagnose(page: &[u64], index: u64, expected_gen: u64) -> Mismatch {
    let (bad_words, first_bad_word) = count_bad_words(page, index, expected_gen);
    let mut m = Mismatch {
        page: index,
        expected_gen,
        found_gen: None,
        found_page: None,
        kind: MismatchKind::Garbage,
        bad_words,
        first_bad_word,
    };
    if page[0] != MAGIC {
        return m;
    }
    let (found_page, found_gen) = (page[1], page[2]);
    m.found_page = Some(found_page);
    m.found_gen = Some(found_gen);
    m.kind = if !page_matches(page, found_page, found_gen) {
        MismatchKind::Torn
    } else if found_page != index {
        MismatchKind::Misplaced
    } else if found_gen < expected_gen {
        MismatchKind::Stale
    } else {
        // found_gen == expected_gen cannot reach here: the page would have matched.
        MismatchKind::Future
    };
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(index: u64, generation: u64) -> Vec<u64> {
        let mut p = vec![0u64; PAGE_WORDS];
        fill_page(&mut p, index, generation);
        p
    }

    #[test]
    fn round_trip() {
        for (i, g) in [(0, 1), (1, 1), (12345, 99), (u64::MAX, u64::MAX)] {
            assert_eq!(verify_page(&page(i, g), i, g), Ok(()));
        }
    }

    #[test]
    fn different_index_or_generation_gives_different_body() {
        let a = page(5, 1);
        assert_ne!(a[HEADER_WORDS..], page(6, 1)[HEADER_WORDS..]);
        assert_ne!(a[HEADER_WORDS..], page(5, 2)[HEADER_WORDS..]);
    }

    #[test]
    fn modified_byte_is_detected_anywhere() {
        for word in [0, 1, 2, 3, 200, PAGE_WORDS - 1] {
            for shift in [0, 31, 63] {
                let mut p = page(42, 7);
                p[word] ^= 1 << shift;
                let m = verify_page(&p, 42, 7).unwrap_err();
                assert_eq!(m.bad_words, 1, "word {word}");
                assert_eq!(m.first_bad_word, Some(word));
                let want = match word {
                    0 => MismatchKind::Garbage,
                    // A flipped index/generation in the header makes the body inconsistent.
                    _ => MismatchKind::Torn,
                };
                assert_eq!(m.kind, want, "word {word}");
            }
        }
    }

    #[test]
    fn stale_page_is_detected_as_lost_write() {
        // The page still holds generation 3, internally consistent, but 4 was written.
        let p = page(9, 3);
        let m = verify_page(&p, 9, 4).unwrap_err();
        assert_eq!(m.kind, MismatchKind::Stale);
        assert_eq!(m.found_gen, Some(3));
        assert_eq!(m.found_page, Some(9));
        assert_eq!(m.first_bad_word, Some(2));
        let line = m.to_string();
        assert!(line.starts_with("FERRY-GUEST MISMATCH page=9 expected_gen=4 found_gen=3 "));
        assert!(line.contains("kind=stale"));
    }

    #[test]
    fn future_misplaced_and_garbage() {
        assert_eq!(
            verify_page(&page(9, 5), 9, 4).unwrap_err().kind,
            MismatchKind::Future
        );
        let m = verify_page(&page(10, 4), 9, 4).unwrap_err();
        assert_eq!(m.kind, MismatchKind::Misplaced);
        assert_eq!(m.found_page, Some(10));
        let zero = vec![0u64; PAGE_WORDS];
        let m = verify_page(&zero, 9, 4).unwrap_err();
        assert_eq!(m.kind, MismatchKind::Garbage);
        assert_eq!(m.found_gen, None);
        assert!(m.to_string().contains("found_gen=? found_page=?"));
        assert_eq!(m.bad_words, PAGE_WORDS);
    }

    #[test]
    fn half_written_page_is_torn() {
        // First half from generation 2, second half still generation 1.
        let mut p = page(3, 2);
        let old = page(3, 1);
        p[PAGE_WORDS / 2..].copy_from_slice(&old[PAGE_WORDS / 2..]);
        let m = verify_page(&p, 3, 2).unwrap_err();
        assert_eq!(m.kind, MismatchKind::Torn);
        assert_eq!(m.found_gen, Some(2));
        assert_eq!(m.first_bad_word, Some(PAGE_WORDS / 2));
    }
}
