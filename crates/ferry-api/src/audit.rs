//! The tamper-evident audit trail: the hash chain over the event log, the server's signed
//! checkpoints, and their verification — all pure, so `ferry events verify` can check a
//! log offline with exactly the code the server used to write it.
//!
//! Each event's `hash` is `SHA-256(prev || canonical(event))`, where `prev` is the raw 32
//! bytes of the previous event's hash (32 zero bytes — 64 hex zeros — for the first event)
//! and `canonical` is [`canonical_event`]: a length-prefixed, type-tagged encoding of every
//! field, so no two different events encode to the same bytes. Changing any field of any
//! event, removing one, inserting one or reordering them breaks the chain at the first
//! event that no longer fits.
//!
//! A chain alone only catches clumsy edits: whoever can write the database can recompute
//! every hash after the one they changed. So every 64 events (and whenever a verifier or an
//! export asks) the server signs a [`Checkpoint`] — an event id and the chain's hash there —
//! with its Ed25519 key. A rewritten history no longer matches the signed hashes unless it
//! is re-signed, which needs the key; pinning the public key, or keeping checkpoints (or
//! exports) elsewhere, is what makes that stick against someone holding the data directory.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::events::Event;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// What the first event follows.
pub const GENESIS: Digest = [0; 32];

/// The server signs a checkpoint at least every this many events.
pub const CHECKPOINT_EVERY: i64 = 64;

/// Bumped if the encoding ever changes; part of every hashed and signed message, so a
/// hash of one version can never be taken for another.
const EVENT_DOMAIN: &str = "ferry-audit-event-v1";
const CHECKPOINT_DOMAIN: &str = "ferry-audit-checkpoint-v1";

/// At most this many problems are kept in a report (all are counted).
const MAX_PROBLEMS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("'{0}' is not {1} hex digits")]
    BadHex(String, usize),
    #[error("the audit signing key is not a valid Ed25519 PKCS#8 key: {0}")]
    BadKey(String),
    #[error("cannot generate an audit signing key")]
    Generate,
}

// ---- encoding ---------------------------------------------------------------------------

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Exactly `N` bytes from `2 * N` hex digits (either case).
pub fn from_hex<const N: usize>(s: &str) -> Result<[u8; N], AuditError> {
    let bad = || AuditError::BadHex(s.chars().take(140).collect(), N * 2);
    let digits = s.as_bytes();
    if digits.len() != N * 2 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_time(out: &mut Vec<u8>, t: &DateTime<Utc>) {
    out.extend_from_slice(&t.timestamp().to_be_bytes());
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
}

/// JSON with object keys sorted and every value tagged and length-prefixed: the same value
/// always encodes the same way, whatever order its keys were built or parsed in.
fn put_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.push(b'n'),
        Value::Bool(false) => out.push(b'f'),
        Value::Bool(true) => out.push(b't'),
        Value::Number(n) => {
            out.push(b'#');
            put_str(out, &n.to_string());
        }
        Value::String(s) => {
            out.push(b's');
            put_str(out, s);
        }
        Value::Array(items) => {
            out.push(b'[');
            out.extend_from_slice(&(items.len() as u64).to_be_bytes());
            for item in items {
                put_json(out, item);
            }
        }
        Value::Object(map) => {
            out.push(b'{');
            out.extend_from_slice(&(map.len() as u64).to_be_bytes());
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (k, v) in entries {
                put_str(out, k);
                put_json(out, v);
            }
        }
    }
}

/// The bytes an event's hash covers: every field but the hash itself, in a fixed order,
/// each tagged or length-prefixed (so `("ab", "c")` and `("a", "bc")` differ).
pub fn canonical_event(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put_str(&mut out, EVENT_DOMAIN);
    out.extend_from_slice(&e.id.to_be_bytes());
    put_time(&mut out, &e.at);
    put_str(&mut out, &e.actor);
    put_str(&mut out, e.kind.as_str());
    put_opt_str(&mut out, e.vm.as_deref());
    put_opt_str(&mut out, e.host.as_deref());
    match e.migration {
        None => out.push(0),
        Some(m) => {
            out.push(1);
            out.extend_from_slice(m.as_bytes());
        }
    }
    put_str(&mut out, e.outcome.as_str());
    put_str(&mut out, &e.message);
    put_json(&mut out, &e.data);
    out
}

/// The chain's hash at `e`, given the hash of the event before it ([`GENESIS`] for the
/// first). `e.hash` itself is ignored.
pub fn event_hash(prev: &Digest, e: &Event) -> Digest {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_event(e));
    h.finalize().into()
}

// ---- checkpoints ------------------------------------------------------------------------

/// The server's signed statement "the chain's hash at event `event_id` is `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The checkpoint's own sequence number.
    pub id: i64,
    pub event_id: i64,
    /// Hex SHA-256: the chain's hash at `event_id`.
    pub hash: String,
    pub at: DateTime<Utc>,
    /// Hex Ed25519 signature over [`checkpoint_message`].
    pub signature: String,
}

/// `GET /v1/events/checkpoints`: the key to check them with, and every checkpoint, oldest
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoints {
    /// Hex Ed25519 public key (32 bytes).
    pub public_key: String,
    pub checkpoints: Vec<Checkpoint>,
}

/// What a checkpoint's signature covers.
pub fn checkpoint_message(event_id: i64, hash: &Digest, at: &DateTime<Utc>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    put_str(&mut out, CHECKPOINT_DOMAIN);
    out.extend_from_slice(&event_id.to_be_bytes());
    out.extend_from_slice(hash);
    put_time(&mut out, at);
    out
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn parse(hex: &str) -> Result<PublicKey, AuditError> {
        from_hex::<32>(hex.trim()).map(PublicKey)
    }
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
    /// Whether `signature` (hex) is this key's signature of `msg`.
    pub fn verifies(&self, msg: &[u8], signature: &str) -> bool {
        let Ok(sig) = from_hex::<64>(signature) else {
            return false;
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.0)
            .verify(msg, &sig)
            .is_ok()
    }
}

/// The server's signing key (kept in its data directory as PKCS#8).
pub struct SigningKey(ring::signature::Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key().to_hex())
    }
}

impl SigningKey {
    /// A new key, as PKCS#8 bytes to store.
    pub fn generate_pkcs8() -> Result<Vec<u8>, AuditError> {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| AuditError::Generate)
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, AuditError> {
        ring::signature::Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|e| AuditError::BadKey(e.to_string()))
    }

    pub fn public_key(&self) -> PublicKey {
        use ring::signature::KeyPair;
        let mut k = [0u8; 32];
        k.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(k)
    }

    /// Signs "the chain's hash at `event_id` is `hash`", as of `at`.
    pub fn checkpoint(
        &self,
        id: i64,
        event_id: i64,
        hash: &Digest,
        at: DateTime<Utc>,
    ) -> Checkpoint {
        let sig = self.0.sign(&checkpoint_message(event_id, hash, &at));
        Checkpoint {
            id,
            event_id,
            hash: to_hex(hash),
            at,
            signature: to_hex(sig.as_ref()),
        }
    }
}

// ---- export -----------------------------------------------------------------------------

/// One line of `ferry events export`: every event (with its hash) in order, then the
/// checkpoints, then the key that signed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum ExportRecord {
    Event(Event),
    Checkpoint(Checkpoint),
    PublicKey { public_key: String },
}

// ---- verification -----------------------------------------------------------------------

/// Why the log does not verify at some event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Ids must increase: events were reordered (or one was inserted with an old id).
    OutOfOrder { event: i64, after: i64 },
    /// The event carries no hash (written before the chain existed and never chained).
    MissingHash { event: i64 },
    /// The event's stored hash is not the chain's: this event was changed, or one right
    /// before it was removed, changed or inserted.
    HashMismatch {
        event: i64,
        stored: String,
        computed: String,
    },
    /// A checkpoint's signature does not verify with the key.
    BadSignature { checkpoint: i64, event: i64 },
    /// A validly signed checkpoint names an event the log does not have: events were
    /// removed (from the end, if `event` is past the last one).
    CheckpointEventMissing { checkpoint: i64, event: i64 },
    /// The chain at a signed checkpoint is not what was signed: events up to `event`
    /// (after the previous good checkpoint) were rewritten and the chain recomputed.
    CheckpointMismatch {
        checkpoint: i64,
        event: i64,
        since: Option<i64>,
        signed: String,
        chain: String,
    },
    /// A hash the operator pinned (`--expect ID:HASH`) is not the chain's.
    ExpectedMismatch {
        event: i64,
        expected: String,
        chain: Option<String>,
    },
}

impl Problem {
    /// The event the problem is found at (the first bad event for event problems).
    pub fn event(&self) -> i64 {
        match self {
            Problem::OutOfOrder { event, .. }
            | Problem::MissingHash { event }
            | Problem::HashMismatch { event, .. }
            | Problem::BadSignature { event, .. }
            | Problem::CheckpointEventMissing { event, .. }
            | Problem::CheckpointMismatch { event, .. }
            | Problem::ExpectedMismatch { event, .. } => *event,
        }
    }
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::OutOfOrder { event, after } => write!(
                f,
                "event #{event} comes after #{after}: events were reordered or inserted"
            ),
            Problem::MissingHash { event } => write!(f, "event #{event} has no hash"),
            Problem::HashMismatch {
                event,
                stored,
                computed,
            } => write!(
                f,
                "event #{event} does not fit the chain (stored hash {}…, the chain gives {}…): \
                 it was changed, or an event right before it was removed, changed or inserted",
                short(stored),
                short(computed)
            ),
            Problem::BadSignature { checkpoint, event } => write!(
                f,
                "checkpoint {checkpoint} (event #{event}) is not signed by the key: forged, or \
                 signed by another key"
            ),
            Problem::CheckpointEventMissing { checkpoint, event } => write!(
                f,
                "checkpoint {checkpoint} signed event #{event}, which the log does not have: \
                 events were removed"
            ),
            Problem::CheckpointMismatch {
                checkpoint,
                event,
                since,
                signed,
                chain,
            } => write!(
                f,
                "checkpoint {checkpoint} signed hash {}… for event #{event} but the chain there \
                 is {}…: events {} up to #{event} were rewritten",
                short(signed),
                short(chain),
                match since {
                    Some(s) => format!("after #{s}"),
                    None => "from the start".to_string(),
                }
            ),
            Problem::ExpectedMismatch {
                event,
                expected,
                chain,
            } => match chain {
                Some(c) => write!(
                    f,
                    "event #{event}: expected hash {}…, the chain has {}…: history was rewritten",
                    short(expected),
                    short(c)
                ),
                None => write!(
                    f,
                    "event #{event}: expected hash {}…, but the log has no such event",
                    short(expected)
                ),
            },
        }
    }
}

/// The outcome of checking a log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub events: u64,
    pub first_event: Option<i64>,
    pub last_event: Option<i64>,
    /// The chain's hash at the last event.
    pub head: Option<String>,
    pub checkpoints: u64,
    /// Checkpoints with a good signature and a hash that matches the chain.
    pub checkpoints_ok: u64,
    /// Every event up to here is vouched for: a good checkpoint (or a pinned hash) here,
    /// and no problem anywhere before it.
    pub signed_through: Option<i64>,
    /// The first problems, by event id (at most 1000; `problems_total` counts them all).
    pub problems: Vec<Problem>,
    pub problems_total: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems_total == 0
    }
    /// The first event that does not fit, and why.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

/// Checks a log event by event (so an export of any size streams through it): the chain,
/// the checkpoints (signature, and hash against the chain), and any hashes the operator
/// pinned.
pub struct Verifier {
    /// Good-signature checkpoints and pinned hashes, by event id, not yet reached.
    pending: BTreeMap<i64, Vec<Anchor>>,
    prev: Digest,
    last_id: Option<i64>,
    /// The last anchor that matched (a rewrite found at a later one began after it).
    last_good_anchor: Option<i64>,
    report: Report,
}

/// A hash the chain must have at an event: signed by the server, or pinned by the operator.
#[derive(Debug, Clone)]
enum Anchor {
    Signed { checkpoint: i64, hash: String },
    Pinned { hash: String },
}

impl Verifier {
    /// Starts a check against `key`. Checkpoints with a bad signature are problems at once;
    /// the others are checked when the chain reaches their event.
    pub fn new(key: &PublicKey, checkpoints: &[Checkpoint]) -> Verifier {
        let mut v = Verifier {
            pending: BTreeMap::new(),
            prev: GENESIS,
            last_id: None,
            last_good_anchor: None,
            report: Report::default(),
        };
        for cp in checkpoints {
            v.report.checkpoints += 1;
            let signed = from_hex::<32>(&cp.hash)
                .map(|h| key.verifies(&checkpoint_message(cp.event_id, &h, &cp.at), &cp.signature))
                .unwrap_or(false);
            if signed {
                v.pending
                    .entry(cp.event_id)
                    .or_default()
                    .push(Anchor::Signed {
                        checkpoint: cp.id,
                        hash: cp.hash.to_ascii_lowercase(),
                    });
            } else {
                v.problem(Problem::BadSignature {
                    checkpoint: cp.id,
                    event: cp.event_id,
                });
            }
        }
        v
    }

    /// The chain must have `hash` at `event_id` (a head recorded elsewhere earlier).
    pub fn expect(&mut self, event_id: i64, hash: &str) {
        self.pending
            .entry(event_id)
            .or_default()
            .push(Anchor::Pinned {
                hash: hash.trim().to_ascii_lowercase(),
            });
    }

    fn problem(&mut self, p: Problem) {
        self.report.problems_total += 1;
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(p);
        }
    }

    /// The next event of the log (oldest first).
    pub fn push(&mut self, e: &Event) {
        if let Some(last) = self.last_id {
            if e.id <= last {
                self.problem(Problem::OutOfOrder {
                    event: e.id,
                    after: last,
                });
            }
        }
        self.report.events += 1;
        self.report.first_event.get_or_insert(e.id);
        self.report.last_event = Some(e.id);
        self.last_id = Some(self.last_id.map_or(e.id, |l| l.max(e.id)));

        let computed = event_hash(&self.prev, e);
        let stored = e.hash.as_deref().map(|h| from_hex::<32>(h).map_err(|_| h));
        // Go on from the stored hash: the events after a bad one are then checked against
        // what they claim to follow, so one changed event is one problem, not all after it.
        self.prev = match stored {
            None => {
                self.problem(Problem::MissingHash { event: e.id });
                computed
            }
            Some(Ok(h)) if h == computed => h,
            Some(Ok(h)) => {
                self.problem(Problem::HashMismatch {
                    event: e.id,
                    stored: to_hex(&h),
                    computed: to_hex(&computed),
                });
                h
            }
            Some(Err(text)) => {
                self.problem(Problem::HashMismatch {
                    event: e.id,
                    stored: text.to_string(),
                    computed: to_hex(&computed),
                });
                computed
            }
        };
        let chain = to_hex(&self.prev);
        self.report.head = Some(chain.clone());

        for anchor in self.pending.remove(&e.id).unwrap_or_default() {
            self.check_anchor(e.id, anchor, Some(&chain));
        }
    }

    fn check_anchor(&mut self, event: i64, anchor: Anchor, chain: Option<&str>) {
        match anchor {
            Anchor::Signed { checkpoint, hash } => match chain {
                None => self.problem(Problem::CheckpointEventMissing { checkpoint, event }),
                Some(c) if c == hash => {
                    self.report.checkpoints_ok += 1;
                    self.anchor_ok(event);
                }
                Some(c) => self.problem(Problem::CheckpointMismatch {
                    checkpoint,
                    event,
                    since: self.last_good_anchor,
                    signed: hash,
                    chain: c.to_string(),
                }),
            },
            Anchor::Pinned { hash } => match chain {
                Some(c) if c == hash => self.anchor_ok(event),
                _ => self.problem(Problem::ExpectedMismatch {
                    event,
                    expected: hash,
                    chain: chain.map(str::to_string),
                }),
            },
        }
    }

    fn anchor_ok(&mut self, event: i64) {
        self.last_good_anchor = Some(event);
        // Everything up to here is vouched for only if nothing before it is wrong.
        if self.report.problems_total == 0 {
            self.report.signed_through = Some(event);
        }
    }

    /// Ends the check: anchors whose event never came are problems.
    pub fn finish(mut self) -> Report {
        let pending = std::mem::take(&mut self.pending);
        for (event, anchors) in pending {
            for anchor in anchors {
                self.check_anchor(event, anchor, None);
            }
        }
        self.report.problems.sort_by_key(|p| p.event());
        self.report
    }
}

/// Checks a whole log at once (see [`Verifier`]).
pub fn verify(events: &[Event], checkpoints: &[Checkpoint], key: &PublicKey) -> Report {
    let mut v = Verifier::new(key, checkpoints);
    for e in events {
        v.push(e);
    }
    v.finish()
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
