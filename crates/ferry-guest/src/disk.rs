//! The disk workload: self-verifying blocks on a block device, rewritten at a fixed rate,
//! verified continuously and once more, completely, after the VM restarts.
//!
//! # On-disk layout
//!
//! The area is the first `ferry.disk_mib` MiB of the device (default: the whole device, at most
//! [`crate::config::DEFAULT_MAX_DISK_MIB`]), in 4 KiB blocks. All values are native (x86-64:
//! little-endian) `u64` words.
//!
//! | block | content |
//! |-------|---------|
//! | 0 | header: [`HEADER_MAGIC`], [`LAYOUT_VERSION`], area bytes, data blocks, table blocks, checksum of those five words; the rest zero |
//! | 1 ..= T | generation table: [`TABLE_MAGIC`], table block number, checksum, then [`ENTRIES_PER_TABLE_BLOCK`] generations (entry `e` of table block `t` is data block `t * 509 + e`; unused entries 0) |
//! | T+1 .. | data blocks `0..N`: the memory workload's page pattern ([`crate::pattern`]) for `(block index, generation)`: magic, index, generation, xorshift body |
//!
//! `T` and `N` are the largest that fit ([`AreaLayout::new`]). Generations start at 1; a table
//! entry 0 is never valid in an initialised area.
//!
//! # I/O
//!
//! Every read and write of data and metadata uses `O_DIRECT` with 4 KiB-aligned buffers, so a
//! verification reads the device (through QEMU), not the guest's page cache. `fdatasync`
//! (`File::sync_data`, which also flushes the virtual disk's write cache) orders the writes:
//!
//! - **Initialisation** (block 0 all zero): every data block with generation 1, `fdatasync`;
//!   the whole table, `fdatasync`; the header last, `fdatasync`. A VM stopped before the header
//!   is written finds block 0 still zero on the next boot and initialises again.
//! - **Rewrites** (batches, one per 100 ms slice): each block of the batch, at most once per
//!   batch, is written with generation + 1; `fdatasync`; then the table blocks holding their
//!   entries are rewritten; `fdatasync`. Nothing else happens in between, so on the device a
//!   data block is always at its table generation *g* or, only while its batch is in flight,
//!   at *g + 1*.
//!
//! # The consistency rule after a restart
//!
//! A data write and its table update are not atomic. When the VM stops (crash, kill, reboot)
//! between the data `fdatasync` and the table `fdatasync` of a batch, a block can hold
//! generation *g + 1* while its table entry still says *g*. So after a restart, data block `i`
//! with table entry *g* is:
//!
//! - **clean** if it holds exactly the pattern of `(i, g)`;
//! - **accepted and fixed** if it holds exactly the pattern of `(i, g + 1)`: a write that reached
//!   the disk before its table update did. The entry becomes *g + 1* and its table block is
//!   rewritten (after the sweep). Counted as `ahead`, not as a mismatch;
//! - **a mismatch** otherwise: an older generation (`stale`: a lost write), *g + 2* or more
//!   (`future`), another block's pattern (`misplaced`), magic with an inconsistent body
//!   (`torn`), or no magic (`garbage`). The block is counted, reported and rewritten with
//!   *g* so one fault is reported once.
//!
//! A table block whose magic, number or checksum is wrong after a restart loses all its
//! entries: each of its data blocks counts as a mismatch of kind `table` (`expected_gen=0`),
//! takes the generation it holds if its content is internally consistent for its index
//! (otherwise it is rewritten with generation 1), and the table block is rewritten.
//!
//! While running (no restart in between) the workload knows every generation it wrote, so
//! the rule is strict: anything but the exact expected pattern is a mismatch. After every full
//! sweep over the data blocks it also compares the header and every table block with what it
//! last committed (a mismatch of kind `table` per wrong entry, `header` for the header), which
//! catches a lost metadata write before a restart could hide it behind the rule above.
//!
//! # What is never overwritten
//!
//! The area is initialised only if the device's first 4 KiB are all zero (a new disk: the
//! header is written last, so an interrupted initialisation still looks new). A device whose
//! first block is neither zero nor a Ferry header (a partition table, a file system), a damaged
//! Ferry header, another layout version, or a Ferry area of *another size* than this boot asks
//! for is refused with a `disk error` line instead of being silently reformatted; so is a
//! device that is mounted or used as swap. Use the size it was created with, or a fresh disk.
//!
//! The counters (`written`, `verified`, `mismatches`) live in guest memory and start at 0 in
//! every boot; the generations live on the disk.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::pattern::{self, MismatchKind, PAGE_SIZE, PAGE_WORDS};
use crate::status::{DiskLine, DiskStatusLine, DISK_MISMATCH_PREFIX, PREFIX};
use crate::workload::{emit, write_stride, LineLimiter, Pacer, STATUS_INTERVAL};

/// Size of one block (data, table or header) in bytes.
pub const BLOCK_SIZE: usize = PAGE_SIZE;
const BLOCK_BYTES: u64 = BLOCK_SIZE as u64;
const BLOCK_WORDS: usize = PAGE_WORDS;
/// First word of the header block ("FERRYDK1").
pub const HEADER_MAGIC: u64 = u64::from_be_bytes(*b"FERRYDK1");
/// First word of every table block ("FERRYGT1").
pub const TABLE_MAGIC: u64 = u64::from_be_bytes(*b"FERRYGT1");
/// Version of the on-disk layout; another version is refused, not reformatted.
pub const LAYOUT_VERSION: u64 = 1;
/// Words before the entries of a table block: magic, table block number, checksum.
const TABLE_HEADER_WORDS: usize = 3;
/// Generations per table block.
pub const ENTRIES_PER_TABLE_BLOCK: u64 = (BLOCK_WORDS - TABLE_HEADER_WORDS) as u64;
/// Words of the header that carry data (the checksum is the next one).
const HEADER_WORDS: usize = 5;
const MIB: u64 = 1024 * 1024;
/// Largest single read or write: 32 blocks (128 KiB).
pub const IO_BLOCKS: usize = 32;
/// Rewrites walk the area in runs of this many consecutive blocks (fewer, larger writes),
/// the runs in a scattered order (see [`write_stride`]).
pub const WRITE_RUN: u64 = 16;
/// Most blocks in one rewrite batch (data writes + one table flush).
pub const MAX_BATCH: u64 = 1024;
/// One scheduling slice of the disk thread: the writes due, then verification until it ends.
pub const DISK_SLICE: Duration = Duration::from_millis(100);
/// How long [`run`] waits for the device node to appear (the driver may still be probing).
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// Generation written by the initialisation.
pub const FIRST_GENERATION: u64 = 1;

#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
const O_DIRECT: Option<i32> = Some(0o40000);
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const O_DIRECT: Option<i32> = Some(0o200000);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm"
)))]
const O_DIRECT: Option<i32> = None;

/// Why the disk workload cannot start or had to stop.
#[derive(Debug)]
pub enum DiskError {
    /// A system call failed.
    Io {
        /// What was being done, e.g. `reading the table of /dev/vda`.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The device or the settings cannot be used (missing, too small, ...).
    Unusable(String),
    /// The device holds data this workload must not overwrite, or an area it cannot resume.
    Refused(String),
    /// The generation table or an I/O buffer could not be allocated.
    Alloc {
        /// Bytes requested.
        bytes: u64,
    },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Io { context, source } => write!(f, "{context}: {source}"),
            DiskError::Unusable(m) | DiskError::Refused(m) => f.write_str(m),
            DiskError::Alloc { bytes } => write!(
                f,
                "cannot allocate {} KiB for the disk workload: give the VM more memory or lower \
                 ferry.disk_mib",
                bytes / 1024
            ),
        }
    }
}

impl std::error::Error for DiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DiskError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError::Io { context, source }
}

/// Where the header, the table and the data blocks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaLayout {
    /// Size of the area in bytes (a whole number of MiB when made by [`DiskArea::open`]).
    pub area_bytes: u64,
    /// Number of table blocks (`T`).
    pub table_blocks: u64,
    /// Number of data blocks (`N`).
    pub blocks: u64,
}

impl AreaLayout {
    /// The layout of an area of `area_bytes`: one header block, then as many data blocks as
    /// fit together with the table blocks they need.
    pub fn new(area_bytes: u64) -> Result<AreaLayout, DiskError> {
        let total = area_bytes / BLOCK_BYTES;
        let e = ENTRIES_PER_TABLE_BLOCK;
        let fits = |n: u64| 1 + n.div_ceil(e) + n <= total;
        if !fits(1) {
            return Err(DiskError::Unusable(format!(
                "a disk area of {area_bytes} bytes is too small: it needs at least 3 blocks of 4 KiB"
            )));
        }
        // (total - 1) * e / (e + 1) is within one of the answer; step to the largest that fits.
        let mut n = ((total - 1) as u128 * e as u128 / (e as u128 + 1)) as u64;
        n = n.max(1);
        while !fits(n) {
            n -= 1;
        }
        while fits(n + 1) {
            n += 1;
        }
        Ok(AreaLayout {
            area_bytes,
            table_blocks: n.div_ceil(e),
            blocks: n,
        })
    }

    /// Size in whole MiB.
    pub fn mib(&self) -> u64 {
        self.area_bytes / MIB
    }

    /// Byte offset of table block `t`.
    pub fn table_offset(&self, t: u64) -> u64 {
        (1 + t) * BLOCK_BYTES
    }

    /// Byte offset of data block `i`.
    pub fn data_offset(&self, i: u64) -> u64 {
        (1 + self.table_blocks + i) * BLOCK_BYTES
    }

    fn header_words(&self) -> [u64; HEADER_WORDS + 1] {
        let mut w = [
            HEADER_MAGIC,
            LAYOUT_VERSION,
            self.area_bytes,
            self.blocks,
            self.table_blocks,
            0,
        ];
        w[HEADER_WORDS] = checksum(&w[..HEADER_WORDS]);
        w
    }

    /// Fills `block` with the header of this layout.
    pub fn encode_header(&self, block: &mut [u64]) {
        block.fill(0);
        block[..=HEADER_WORDS].copy_from_slice(&self.header_words());
    }
}

/// What block 0 of a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderState {
    /// All zero: a new disk (or an initialisation that did not finish).
    Zero,
    /// Not zero and no Ferry magic: someone else's data.
    Foreign,
    /// Ferry magic, but unusable (checksum, version or layout wrong).
    Damaged(String),
    /// A valid header.
    Valid(AreaLayout),
}

/// Reads a header block.
pub fn decode_header(block: &[u64]) -> HeaderState {
    if block.iter().all(|&w| w == 0) {
        return HeaderState::Zero;
    }
    if block[0] != HEADER_MAGIC {
        return HeaderState::Foreign;
    }
    if block[HEADER_WORDS] != checksum(&block[..HEADER_WORDS]) {
        return HeaderState::Damaged("its checksum does not match".into());
    }
    if block[1] != LAYOUT_VERSION {
        return HeaderState::Damaged(format!(
            "layout version {} (this guest knows version {LAYOUT_VERSION})",
            block[1]
        ));
    }
    let area_bytes = block[2];
    match AreaLayout::new(area_bytes) {
        Ok(l) if l.blocks == block[3] && l.table_blocks == block[4] => HeaderState::Valid(l),
        _ => HeaderState::Damaged(format!(
            "area of {area_bytes} bytes with {} data and {} table blocks is not a layout this \
             guest makes",
            block[3], block[4]
        )),
    }
}

/// 64-bit checksum of metadata words (FNV-1a style over words, with extra mixing). Not
/// cryptographic: it detects damage, not tampering.
pub fn checksum(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// Fills `block` as table block `t` holding `entries` (at most [`ENTRIES_PER_TABLE_BLOCK`];
/// the rest are zero).
pub fn encode_table_block(block: &mut [u64], t: u64, entries: &[u64]) {
    block.fill(0);
    block[0] = TABLE_MAGIC;
    block[1] = t;
    block[TABLE_HEADER_WORDS..TABLE_HEADER_WORDS + entries.len()].copy_from_slice(entries);
    block[2] = table_checksum(block);
}

fn table_checksum(block: &[u64]) -> u64 {
    checksum(&[block[0], block[1], checksum(&block[TABLE_HEADER_WORDS..])])
}

/// The entries of table block `t`, or `None` if its magic, number or checksum is wrong.
pub fn decode_table_block(block: &[u64], t: u64) -> Option<&[u64]> {
    (block[0] == TABLE_MAGIC && block[1] == t && block[2] == table_checksum(block))
        .then(|| &block[TABLE_HEADER_WORDS..])
}

/// A 4 KiB-aligned buffer of whole blocks, as `O_DIRECT` requires.
struct AlignedBuf {
    ptr: NonNull<u64>,
    blocks: usize,
}

// SAFETY: the buffer owns its allocation exclusively (like a Vec), so moving it to another
// thread is sound.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(blocks: usize) -> Option<std::alloc::Layout> {
        let bytes = blocks.checked_mul(BLOCK_SIZE)?;
        std::alloc::Layout::from_size_align(bytes, BLOCK_SIZE).ok()
    }

    fn new(blocks: usize) -> Result<AlignedBuf, DiskError> {
        let blocks = blocks.max(1);
        let bytes = (blocks as u64).saturating_mul(BLOCK_BYTES);
        let layout = Self::layout(blocks).ok_or(DiskError::Alloc { bytes })?;
        // SAFETY: the layout has a non-zero size (at least one block).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<u64>();
        let ptr = NonNull::new(ptr).ok_or(DiskError::Alloc { bytes })?;
        Ok(AlignedBuf { ptr, blocks })
    }

    fn words(&self) -> &[u64] {
        // SAFETY: ptr points to `blocks * BLOCK_WORDS` initialised (zeroed at allocation) u64s
        // owned by self; the shared borrow of self prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.blocks * BLOCK_WORDS) }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `words`, and the exclusive borrow of self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.blocks * BLOCK_WORDS) }
    }

    fn block(&self, j: usize) -> &[u64] {
        &self.words()[j * BLOCK_WORDS..(j + 1) * BLOCK_WORDS]
    }

    fn block_mut(&mut self, j: usize) -> &mut [u64] {
        &mut self.words_mut()[j * BLOCK_WORDS..(j + 1) * BLOCK_WORDS]
    }

    /// The first `blocks` blocks as bytes. Panics if `blocks` exceeds the buffer.
    fn bytes(&self, blocks: usize) -> &[u8] {
        assert!(blocks <= self.blocks);
        // SAFETY: in bounds (checked above); u8 has no alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), blocks * BLOCK_SIZE) }
    }

    fn bytes_mut(&mut self, blocks: usize) -> &mut [u8] {
        assert!(blocks <= self.blocks);
        // SAFETY: in bounds (checked above), exclusive borrow; any byte pattern is a valid u64.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), blocks * BLOCK_SIZE)
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.blocks) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), layout) }
        }
    }
}

/// What kind of damage a disk mismatch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskMismatchKind {
    /// A data block that fails verification (see [`MismatchKind`]).
    Data(MismatchKind),
    /// A generation table entry that is wrong or unreadable.
    Table,
    /// The header block changed.
    Header,
}

impl DiskMismatchKind {
    /// Stable lower-case name used on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMismatchKind::Data(k) => k.as_str(),
            DiskMismatchKind::Table => "table",
            DiskMismatchKind::Header => "header",
        }
    }
}

/// One disk mismatch, printed as a `FERRY-GUEST DISK-MISMATCH` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskMismatch {
    /// Data block index (for a table entry: the data block it describes); `None` for the
    /// header.
    pub block: Option<u64>,
    /// Generation expected (0 when unknown: the table entry was lost).
    pub expected_gen: u64,
    /// Generation found (in the block's header, or in the table entry), if readable.
    pub found_gen: Option<u64>,
    /// Index found in a data block's header, if it has the magic.
    pub found_block: Option<u64>,
    /// Classification.
    pub kind: DiskMismatchKind,
}

impl fmt::Display for DiskMismatch {
    /// `FERRY-GUEST DISK-MISMATCH block=<i|header> expected_gen=<g> found_gen=<g|?>
    /// kind=<kind> found_block=<i|?>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        write!(
            f,
            "{DISK_MISMATCH_PREFIX} block={} expected_gen={} found_gen={} kind={} found_block={}",
            self.block
                .map_or_else(|| "header".to_string(), |b| b.to_string()),
            self.expected_gen,
            opt(self.found_gen),
            self.kind.as_str(),
            opt(self.found_block)
        )
    }
}

/// How [`DiskArea::open`] found the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Block 0 was zero: the area must be initialised ([`DiskArea::init_some`]).
    Fresh,
    /// A valid area of the requested size: verify it ([`DiskArea::resume_verify_some`]).
    Resume,
}

/// An open disk area: the device, its layout, the expected generation of every data block,
/// and the counters.
pub struct DiskArea {
    file: File,
    path: PathBuf,
    layout: AreaLayout,
    gens: Vec<u64>,
    buf: AlignedBuf,
    one: AlignedBuf,
    dirty_tables: Vec<bool>,
    any_dirty: bool,
    runs: u64,
    run_stride: u64,
    next_write: u64,
    next_verify: u64,
    init_next: u64,
    /// Data blocks written in total (this boot), including the initialisation and repairs.
    pub written: u64,
    /// Data blocks verified in total (this boot).
    pub verified: u64,
    /// Mismatches found in total (this boot).
    pub mismatches: u64,
    /// Blocks accepted one generation ahead of the table after the restart.
    pub ahead: u64,
    /// Complete verification sweeps over all data blocks (this boot).
    pub sweeps: u64,
}

/// The mount point or swap use of a block device (or one of its partitions), if any.
fn device_in_use(path: &Path) -> Option<String> {
    let dev = path.to_str()?;
    let is_part_of = |src: &str| {
        src.strip_prefix(dev).is_some_and(|rest| {
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            rest.bytes().all(|b| b.is_ascii_digit())
        })
    };
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            let mut w = line.split_whitespace();
            if let (Some(src), Some(dir)) = (w.next(), w.next()) {
                if is_part_of(src) {
                    return Some(format!("{src} is mounted on {dir}"));
                }
            }
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            if let Some(src) = line.split_whitespace().next() {
                if is_part_of(src) {
                    return Some(format!("{src} is used as swap"));
                }
            }
        }
    }
    None
}

fn zeroed_gens(n: u64) -> Result<Vec<u64>, DiskError> {
    let err = DiskError::Alloc {
        bytes: n.saturating_mul(8),
    };
    let n = usize::try_from(n).map_err(|_| DiskError::Alloc { bytes: u64::MAX })?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| err)?;
    v.resize(n, 0);
    Ok(v)
}

impl DiskArea {
    /// Opens `path` read-write (with `O_DIRECT` if `direct`), sizes the area (`mib`, or the
    /// whole device up to [`crate::config::DEFAULT_MAX_DISK_MIB`] MiB), and reads block 0: a
    /// zero block is [`Start::Fresh`], a valid header of the same area size is
    /// [`Start::Resume`] (the table is loaded), anything else is refused (see the module
    /// documentation). Nothing is written here.
    pub fn open(
        path: &Path,
        mib: Option<u64>,
        direct: bool,
    ) -> Result<(DiskArea, Start), DiskError> {
        let shown = path.display();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if direct {
            let flag = O_DIRECT.ok_or_else(|| {
                DiskError::Unusable("O_DIRECT is not known for this CPU architecture".into())
            })?;
            opts.custom_flags(flag);
        }
        let mut file = opts.open(path).map_err(|e| {
            let hint = if e.raw_os_error() == Some(22) {
                " (the file system does not support O_DIRECT)"
            } else {
                ""
            };
            DiskError::Io {
                context: format!("opening {shown} for reading and writing{hint}"),
                source: e,
            }
        })?;
        let meta = file
            .metadata()
            .map_err(io_err(format!("reading the metadata of {shown}")))?;
        if meta.file_type().is_block_device() {
            if let Some(use_) = device_in_use(path) {
                return Err(DiskError::Refused(format!(
                    "{use_}: refusing to use {shown} for the disk workload; give the VM a \
                     separate, empty disk"
                )));
            }
        } else if !meta.file_type().is_file() {
            return Err(DiskError::Unusable(format!(
                "{shown} is neither a block device nor a regular file"
            )));
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(io_err(format!("finding the size of {shown}")))?;
        let device_mib = size / MIB;
        let area_mib = match mib {
            Some(m) if m > device_mib => {
                return Err(DiskError::Unusable(format!(
                    "ferry.disk_mib={m} but {shown} has only {device_mib} MiB ({size} bytes)"
                )))
            }
            Some(m) => m,
            None => device_mib.min(crate::config::DEFAULT_MAX_DISK_MIB),
        };
        if area_mib == 0 {
            return Err(DiskError::Unusable(format!(
                "{shown} has only {size} bytes; the disk workload needs at least 1 MiB"
            )));
        }
        let layout = AreaLayout::new(area_mib * MIB)?;
        let mut area = DiskArea {
            file,
            path: path.to_path_buf(),
            layout,
            gens: zeroed_gens(layout.blocks)?,
            buf: AlignedBuf::new(IO_BLOCKS)?,
            one: AlignedBuf::new(1)?,
            dirty_tables: vec![false; layout.table_blocks as usize],
            any_dirty: false,
            runs: layout.blocks.div_ceil(WRITE_RUN),
            run_stride: write_stride(layout.blocks.div_ceil(WRITE_RUN)),
            next_write: 0,
            next_verify: 0,
            init_next: 0,
            written: 0,
            verified: 0,
            mismatches: 0,
            ahead: 0,
            sweeps: 0,
        };
        area.read_blocks(0, 1, "reading the header")?;
        let start = match decode_header(area.buf.block(0)) {
            HeaderState::Zero => Start::Fresh,
            HeaderState::Foreign => {
                return Err(DiskError::Refused(format!(
                    "{shown} holds other data (its first 4 KiB are neither zero nor a Ferry disk \
                     header): refusing to overwrite it; give the VM an empty disk, or zero its \
                     first 4 KiB to reuse it"
                )))
            }
            HeaderState::Damaged(why) => {
                return Err(DiskError::Refused(format!(
                    "{shown} has a damaged Ferry disk header ({why}): refusing to reformat it; \
                     zero its first 4 KiB to start over"
                )))
            }
            HeaderState::Valid(found) if found != layout => {
                return Err(DiskError::Refused(format!(
                    "{shown} holds a Ferry disk area of {} MiB from an earlier boot, but this \
                     boot asks for {area_mib} MiB: refusing to reformat it; boot with \
                     ferry.disk_mib={} or give the VM a fresh disk",
                    found.mib(),
                    found.mib()
                )))
            }
            HeaderState::Valid(_) => {
                area.load_table()?;
                Start::Resume
            }
        };
        Ok((area, start))
    }

    /// The layout of the area.
    pub fn layout(&self) -> AreaLayout {
        self.layout
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Expected generation of data block `i` (0 = not written, or its table entry was lost).
    /// Panics if out of range.
    pub fn generation(&self, i: u64) -> u64 {
        self.gens[i as usize]
    }

    fn read_blocks(&mut self, offset: u64, n: usize, what: &str) -> Result<(), DiskError> {
        let path = &self.path;
        self.file
            .read_exact_at(self.buf.bytes_mut(n), offset)
            .map_err(|e| DiskError::Io {
                context: format!("{what} of {} (offset {offset})", path.display()),
                source: e,
            })
    }

    fn write_blocks(&self, offset: u64, n: usize, what: &str) -> Result<(), DiskError> {
        self.file
            .write_all_at(self.buf.bytes(n), offset)
            .map_err(io_err(format!(
                "{what} of {} (offset {offset})",
                self.path.display()
            )))
    }

    fn sync(&self) -> Result<(), DiskError> {
        self.file
            .sync_data()
            .map_err(io_err(format!("fdatasync of {}", self.path.display())))
    }

    /// Reads the whole table into `gens`; entries of an unreadable table block stay 0.
    fn load_table(&mut self) -> Result<(), DiskError> {
        let e = ENTRIES_PER_TABLE_BLOCK as usize;
        let mut t = 0;
        while t < self.layout.table_blocks {
            let n = (self.layout.table_blocks - t).min(IO_BLOCKS as u64) as usize;
            self.read_blocks(self.layout.table_offset(t), n, "reading the table")?;
            for j in 0..n {
                let tb = t + j as u64;
                let first = tb as usize * e;
                let count = (self.gens.len() - first).min(e);
                if let Some(entries) = decode_table_block(self.buf.block(j), tb) {
                    self.gens[first..first + count].copy_from_slice(&entries[..count]);
                }
            }
            t += n as u64;
        }
        Ok(())
    }

    fn mark_dirty(&mut self, i: u64) {
        self.dirty_tables[(i / ENTRIES_PER_TABLE_BLOCK) as usize] = true;
        self.any_dirty = true;
    }

    fn encode_table_into(&mut self, j: usize, tb: u64) {
        let e = ENTRIES_PER_TABLE_BLOCK as usize;
        let first = tb as usize * e;
        let count = (self.gens.len() - first).min(e);
        let entries = &self.gens[first..first + count];
        // Split borrows: the buffer and the table are different fields.
        let block = &mut self.buf.words_mut()[j * BLOCK_WORDS..(j + 1) * BLOCK_WORDS];
        encode_table_block(block, tb, entries);
    }

    /// Writes every dirty table block (contiguous ones together), then `fdatasync`.
    fn flush_tables(&mut self) -> Result<(), DiskError> {
        if !self.any_dirty {
            return Ok(());
        }
        let mut t = 0u64;
        let total = self.layout.table_blocks;
        while t < total {
            if !self.dirty_tables[t as usize] {
                t += 1;
                continue;
            }
            let start = t;
            let mut n = 0usize;
            while t < total && self.dirty_tables[t as usize] && n < IO_BLOCKS {
                self.encode_table_into(n, t);
                self.dirty_tables[t as usize] = false;
                n += 1;
                t += 1;
            }
            self.write_blocks(self.layout.table_offset(start), n, "writing the table")?;
        }
        self.any_dirty = false;
        self.sync()
    }

    /// Initialises up to `max` more data blocks with generation 1 (sequential writes); after
    /// the last one: `fdatasync`, the whole table, `fdatasync`, the header, `fdatasync`.
    /// Returns true when the area is complete. Only for [`Start::Fresh`].
    pub fn init_some(&mut self, max: u64) -> Result<bool, DiskError> {
        let end = self
            .layout
            .blocks
            .min(self.init_next.saturating_add(max.max(1)));
        while self.init_next < end {
            let first = self.init_next;
            let n = (end - first).min(IO_BLOCKS as u64) as usize;
            for j in 0..n {
                let i = first + j as u64;
                pattern::fill_page(self.buf.block_mut(j), i, FIRST_GENERATION);
                self.gens[i as usize] = FIRST_GENERATION;
            }
            self.write_blocks(
                self.layout.data_offset(first),
                n,
                "initialising data blocks",
            )?;
            self.init_next += n as u64;
            self.written += n as u64;
        }
        if self.init_next < self.layout.blocks {
            return Ok(false);
        }
        self.sync()?;
        self.dirty_tables.fill(true);
        self.any_dirty = true;
        self.flush_tables()?;
        let layout = self.layout;
        layout.encode_header(self.buf.block_mut(0));
        self.write_blocks(0, 1, "writing the header")?;
        self.sync()?;
        Ok(true)
    }

    /// Writes block `i` with generation `g` from the one-block buffer (no sync).
    fn write_one(&mut self, i: u64, g: u64) -> Result<(), DiskError> {
        pattern::fill_page(self.one.words_mut(), i, g);
        self.file
            .write_all_at(self.one.bytes(1), self.layout.data_offset(i))
            .map_err(io_err(format!(
                "rewriting data block {i} of {}",
                self.path.display()
            )))?;
        self.written += 1;
        Ok(())
    }

    /// Post-restart verification of up to `max` more blocks (the rule in the module
    /// documentation), calling `report` for each mismatch. Returns true when every block was
    /// verified once; the fixed table entries are then written.
    pub fn resume_verify_some(
        &mut self,
        max: u64,
        report: &mut dyn FnMut(&DiskMismatch),
    ) -> Result<bool, DiskError> {
        let blocks = self.layout.blocks;
        let end = blocks.min(self.next_verify.saturating_add(max.max(1)));
        while self.next_verify < end {
            let first = self.next_verify;
            let n = (end - first).min(IO_BLOCKS as u64) as usize;
            self.read_blocks(self.layout.data_offset(first), n, "verifying data blocks")?;
            let mut repairs: Vec<(u64, u64)> = Vec::new();
            for j in 0..n {
                let i = first + j as u64;
                let g = self.gens[i as usize];
                let w = self.buf.block(j);
                self.verified += 1;
                if g == 0 {
                    // The table entry was lost: take a consistent generation, else rewrite.
                    let consistent = w[0] == pattern::MAGIC
                        && w[1] == i
                        && w[2] >= FIRST_GENERATION
                        && pattern::page_matches(w, i, w[2]);
                    let found = (w[0] == pattern::MAGIC).then_some(w[2]);
                    let m = DiskMismatch {
                        block: Some(i),
                        expected_gen: 0,
                        found_gen: found,
                        found_block: (w[0] == pattern::MAGIC).then_some(w[1]),
                        kind: DiskMismatchKind::Table,
                    };
                    if consistent {
                        self.gens[i as usize] = w[2];
                    } else {
                        self.gens[i as usize] = FIRST_GENERATION;
                        repairs.push((i, FIRST_GENERATION));
                    }
                    self.mark_dirty(i);
                    self.mismatches += 1;
                    report(&m);
                } else if pattern::page_matches(w, i, g) {
                    // Clean.
                } else if pattern::page_matches(w, i, g + 1) {
                    self.gens[i as usize] = g + 1;
                    self.mark_dirty(i);
                    self.ahead += 1;
                } else {
                    let m = pattern::diagnose(w, i, g);
                    self.mismatches += 1;
                    report(&data_mismatch(&m));
                    repairs.push((i, g));
                }
            }
            for (i, g) in repairs.iter().copied() {
                self.write_one(i, g)?;
            }
            if !repairs.is_empty() {
                self.sync()?;
            }
            self.next_verify += n as u64;
        }
        if self.next_verify < blocks {
            return Ok(false);
        }
        self.next_verify = 0;
        self.sweeps += 1;
        self.flush_tables()?;
        Ok(true)
    }

    /// The next block of the rewrite walk: runs of [`WRITE_RUN`] blocks, the runs in stride
    /// order, so `blocks` consecutive calls return every block exactly once.
    fn next_write_index(&mut self) -> u64 {
        let slots = self.runs * WRITE_RUN;
        loop {
            let p = self.next_write;
            self.next_write = (p + 1) % slots;
            let run = (p / WRITE_RUN) * self.run_stride % self.runs;
            let i = run * WRITE_RUN + p % WRITE_RUN;
            if i < self.layout.blocks {
                return i;
            }
        }
    }

    /// Rewrites the next `n` blocks of the walk (at most [`MAX_BATCH`] and at most the number
    /// of blocks, so each block once) with generation + 1, `fdatasync`, then their table
    /// blocks, `fdatasync`. Returns the number of blocks written.
    pub fn write_batch(&mut self, n: u64) -> Result<u64, DiskError> {
        let n = n.min(MAX_BATCH).min(self.layout.blocks);
        if n == 0 {
            return Ok(0);
        }
        let mut idx = Vec::with_capacity(n as usize);
        for _ in 0..n {
            idx.push(self.next_write_index());
        }
        let mut k = 0;
        while k < idx.len() {
            // A segment of consecutive block numbers, one write.
            let mut len = 1;
            while k + len < idx.len() && len < IO_BLOCKS && idx[k + len] == idx[k] + len as u64 {
                len += 1;
            }
            for j in 0..len {
                let i = idx[k + j];
                let g = self.gens[i as usize] + 1;
                self.gens[i as usize] = g;
                pattern::fill_page(self.buf.block_mut(j), i, g);
            }
            self.write_blocks(
                self.layout.data_offset(idx[k]),
                len,
                "rewriting data blocks",
            )?;
            k += len;
        }
        self.sync()?;
        for &i in &idx {
            self.mark_dirty(i);
        }
        self.flush_tables()?;
        self.written += n;
        Ok(n)
    }

    /// Verifies up to `max` data blocks of the sweep (stopping at the end of the area), then,
    /// when the sweep wraps, the header and the table. Each mismatch is counted, passed to
    /// `report` and repaired (the block rewritten with its expected generation, the metadata
    /// rewritten), so one fault is reported once.
    pub fn verify_some(
        &mut self,
        max: u64,
        report: &mut dyn FnMut(&DiskMismatch),
    ) -> Result<(), DiskError> {
        let blocks = self.layout.blocks;
        let first = self.next_verify;
        let n = (blocks - first).min(max.max(1)).min(IO_BLOCKS as u64) as usize;
        self.read_blocks(self.layout.data_offset(first), n, "verifying data blocks")?;
        let mut repairs: Vec<(u64, u64)> = Vec::new();
        for j in 0..n {
            let i = first + j as u64;
            let g = self.gens[i as usize];
            let w = self.buf.block(j);
            if !pattern::page_matches(w, i, g) {
                let m = pattern::diagnose(w, i, g);
                self.mismatches += 1;
                report(&data_mismatch(&m));
                repairs.push((i, g));
            }
        }
        self.verified += n as u64;
        for (i, g) in repairs.iter().copied() {
            self.write_one(i, g)?;
        }
        if !repairs.is_empty() {
            self.sync()?;
        }
        self.next_verify = first + n as u64;
        if self.next_verify >= blocks {
            self.next_verify = 0;
            self.sweeps += 1;
            self.verify_metadata(report)?;
        }
        Ok(())
    }

    /// Compares the header and every table block on the device with what was committed.
    fn verify_metadata(&mut self, report: &mut dyn FnMut(&DiskMismatch)) -> Result<(), DiskError> {
        self.read_blocks(0, 1, "verifying the header")?;
        let layout = self.layout;
        let mut want = [0u64; BLOCK_WORDS];
        layout.encode_header(&mut want);
        if self.buf.block(0) != want.as_slice() {
            self.mismatches += 1;
            report(&DiskMismatch {
                block: None,
                expected_gen: 0,
                found_gen: None,
                found_block: None,
                kind: DiskMismatchKind::Header,
            });
            layout.encode_header(self.buf.block_mut(0));
            self.write_blocks(0, 1, "rewriting the header")?;
            self.sync()?;
        }
        let e = ENTRIES_PER_TABLE_BLOCK;
        let mut t = 0;
        while t < layout.table_blocks {
            let n = (layout.table_blocks - t).min(IO_BLOCKS as u64) as usize;
            self.read_blocks(layout.table_offset(t), n, "verifying the table")?;
            for j in 0..n {
                let tb = t + j as u64;
                let first = tb * e;
                let count = (layout.blocks - first).min(e);
                let block = self.buf.block(j);
                let entries = decode_table_block(block, tb);
                let mut bad = false;
                for k in 0..count {
                    let i = first + k;
                    let want = self.gens[i as usize];
                    let found = entries.map(|en| en[k as usize]);
                    if found != Some(want) {
                        bad = true;
                        self.mismatches += 1;
                        report(&DiskMismatch {
                            block: Some(i),
                            expected_gen: want,
                            found_gen: found,
                            found_block: None,
                            kind: DiskMismatchKind::Table,
                        });
                    }
                }
                if bad || entries.is_none() {
                    self.dirty_tables[tb as usize] = true;
                    self.any_dirty = true;
                }
            }
            t += n as u64;
        }
        self.flush_tables()
    }
}

fn data_mismatch(m: &pattern::Mismatch) -> DiskMismatch {
    DiskMismatch {
        block: Some(m.page),
        expected_gen: m.expected_gen,
        found_gen: m.found_gen,
        found_block: m.found_page,
        kind: DiskMismatchKind::Data(m.kind),
    }
}

/// Disk workload settings (from `ferry.disk*`, see [`crate::Config::disk_settings`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSettings {
    /// The device, `/dev/<ferry.disk>` (a regular file in tests).
    pub path: PathBuf,
    /// `ferry.disk_mib`; `None` = the whole device up to 1024 MiB.
    pub mib: Option<u64>,
    /// `ferry.disk_rate_mib`: MiB/s rewritten; 0 = initialise once, then only verify.
    pub rate_mib: f64,
}

/// Options of [`run`] that are not guest settings.
#[derive(Debug, Clone)]
pub struct DiskRunOptions {
    /// Return after this many disk status lines (tests); `None` runs forever.
    pub max_ticks: Option<u64>,
    /// Open with `O_DIRECT` (always in the guest; tests may turn it off where the file system
    /// lacks it).
    pub direct: bool,
    /// How long to wait for the device node to appear.
    pub device_wait: Duration,
}

impl Default for DiskRunOptions {
    fn default() -> Self {
        DiskRunOptions {
            max_ticks: None,
            direct: true,
            device_wait: DEVICE_WAIT,
        }
    }
}

struct Reporter<'a> {
    out: &'a mut dyn Write,
    mib: u64,
    rate_mib: f64,
    tick: u64,
    next_status: Instant,
    limiter: LineLimiter,
}

impl Reporter<'_> {
    fn mismatch(&mut self, m: &DiskMismatch) {
        if self.limiter.admit() {
            emit(self.out, m);
        }
    }

    /// Prints a disk status line if one is due; returns true when `max_ticks` is reached.
    fn maybe_status(&mut self, a: &DiskArea, now: Instant, max_ticks: Option<u64>) -> bool {
        if now < self.next_status {
            return false;
        }
        let suppressed = self.limiter.next_interval();
        if suppressed > 0 {
            emit(
                self.out,
                &format_args!(
                    "{PREFIX} disk mismatch-lines-suppressed count={}",
                    suppressed
                ),
            );
        }
        self.tick += 1;
        emit(
            self.out,
            &DiskStatusLine {
                tick: self.tick,
                written: a.written,
                verified: a.verified,
                mismatches: a.mismatches,
                mib: self.mib,
                rate_mib: self.rate_mib,
            },
        );
        self.next_status += STATUS_INTERVAL;
        if self.next_status <= now {
            self.next_status = now + STATUS_INTERVAL;
        }
        max_ticks.is_some_and(|m| self.tick >= m)
    }
}

fn wait_for_device(path: &Path, wait: Duration) -> Result<(), DiskError> {
    let deadline = Instant::now() + wait;
    loop {
        match std::fs::metadata(path) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DiskError::Unusable(format!(
                    "{} does not exist (waited {} s): attach the disk (e.g. -device \
                     virtio-blk-pci) or fix ferry.disk",
                    path.display(),
                    wait.as_secs_f64()
                )))
            }
            Err(e) => return Err(io_err(format!("looking for {}", path.display()))(e)),
        }
    }
}

/// Runs the disk workload: open, initialise or verify after the restart, then rewrite at
/// `rate_mib` and verify continuously, printing the disk console lines to `out`. Returns only
/// after `opts.max_ticks` status lines, or with the error that stopped it.
pub fn run(
    s: &DiskSettings,
    out: &mut dyn Write,
    opts: &DiskRunOptions,
) -> Result<DiskArea, DiskError> {
    wait_for_device(&s.path, opts.device_wait)?;
    let (mut area, start) = DiskArea::open(&s.path, s.mib, opts.direct)?;
    let mib = area.layout().mib();
    let blocks = area.layout().blocks;
    let mut rep = Reporter {
        out,
        mib,
        rate_mib: s.rate_mib,
        tick: 0,
        next_status: Instant::now() + STATUS_INTERVAL,
        limiter: LineLimiter::default(),
    };
    match start {
        Start::Fresh => {
            while !area.init_some(IO_BLOCKS as u64)? {
                if rep.maybe_status(&area, Instant::now(), opts.max_ticks) {
                    return Ok(area);
                }
            }
            emit(
                rep.out,
                &DiskLine::Ready {
                    mib,
                    rate_mib: s.rate_mib,
                },
            );
        }
        Start::Resume => {
            emit(rep.out, &DiskLine::Resume { blocks });
            let before = area.mismatches;
            while !area.resume_verify_some(IO_BLOCKS as u64, &mut |m| rep.mismatch(m))? {
                if rep.maybe_status(&area, Instant::now(), opts.max_ticks) {
                    return Ok(area);
                }
            }
            emit(
                rep.out,
                &DiskLine::VerifiedAfterRestart {
                    blocks,
                    mismatches: area.mismatches - before,
                    ahead: area.ahead,
                },
            );
        }
    }
    let mut pacer = Pacer::new(
        s.rate_mib * (MIB as f64 / BLOCK_SIZE as f64),
        Instant::now(),
    );
    loop {
        let slice_start = Instant::now();
        let mut due = pacer.due(slice_start);
        while due > 0 {
            // Batches of at most MAX_BATCH blocks, each committed before the next.
            let done = area.write_batch(due)?;
            due = due.saturating_sub(done.max(1));
        }
        let slice_end = slice_start + DISK_SLICE;
        let now = loop {
            area.verify_some(IO_BLOCKS as u64, &mut |m| rep.mismatch(m))?;
            let now = Instant::now();
            if now >= slice_end {
                break now;
            }
        };
        if rep.maybe_status(&area, now, opts.max_ticks) {
            return Ok(area);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ConsoleSummary;

    const MIB_U: u64 = MIB;

    /// A sparse temp file standing in for the device, on /var/tmp (a real disk file system
    /// where O_DIRECT works; tmpfs refuses it) when possible.
    struct Dev {
        _dir: tempfile::TempDir,
        path: PathBuf,
        direct: bool,
    }

    fn dev(mib: u64) -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("ferry-disk-test")
            .tempdir_in("/var/tmp")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("disk.img");
        let f = File::create(&path).unwrap();
        f.set_len(mib * MIB_U).unwrap();
        drop(f);
        // O_DIRECT where the file system has it (EINVAL otherwise): tests only.
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(O_DIRECT.unwrap_or(0))
            .open(&path)
            .is_ok()
            && O_DIRECT.is_some();
        Dev {
            _dir: dir,
            path,
            direct,
        }
    }

    impl Dev {
        fn open(&self, mib: Option<u64>) -> Result<(DiskArea, Start), DiskError> {
            DiskArea::open(&self.path, mib, self.direct)
        }

        fn fresh(&self, mib: Option<u64>) -> DiskArea {
            let (mut a, start) = self.open(mib).unwrap();
            assert_eq!(start, Start::Fresh);
            while !a.init_some(100).unwrap() {}
            a
        }

        fn resume(&self, mib: Option<u64>) -> DiskArea {
            let (a, start) = self.open(mib).unwrap();
            assert_eq!(start, Start::Resume);
            a
        }

        /// Bypasses the workload: plain buffered I/O on the file.
        fn poke(&self, offset: u64, bytes: &[u8]) {
            let f = OpenOptions::new().write(true).open(&self.path).unwrap();
            f.write_all_at(bytes, offset).unwrap();
            f.sync_all().unwrap();
        }

        fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
            let f = File::open(&self.path).unwrap();
            let mut b = vec![0; len];
            f.read_exact_at(&mut b, offset).unwrap();
            b
        }

        fn put_block(&self, a: &DiskArea, i: u64, generation: u64) {
            let mut w = vec![0u64; BLOCK_WORDS];
            pattern::fill_page(&mut w, i, generation);
            self.poke(a.layout().data_offset(i), &words_to_bytes(&w));
        }
    }

    fn words_to_bytes(w: &[u64]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    fn sweep(a: &mut DiskArea) -> Vec<DiskMismatch> {
        let mut found = Vec::new();
        let start = a.sweeps;
        while a.sweeps == start {
            a.verify_some(IO_BLOCKS as u64, &mut |m| found.push(*m))
                .unwrap();
        }
        found
    }

    fn resume_sweep(a: &mut DiskArea) -> Vec<DiskMismatch> {
        let mut found = Vec::new();
        while !a.resume_verify_some(50, &mut |m| found.push(*m)).unwrap() {}
        found
    }

    #[test]
    fn layout_is_maximal_and_consistent() {
        for mib in [1u64, 2, 3, 32, 64, 1024] {
            let l = AreaLayout::new(mib * MIB_U).unwrap();
            let total = mib * MIB_U / BLOCK_BYTES;
            assert!(1 + l.table_blocks + l.blocks <= total, "{l:?}");
            assert_eq!(l.table_blocks, l.blocks.div_ceil(ENTRIES_PER_TABLE_BLOCK));
            // One more data block would not fit.
            let n = l.blocks + 1;
            assert!(1 + n.div_ceil(ENTRIES_PER_TABLE_BLOCK) + n > total, "{l:?}");
            assert_eq!(l.mib(), mib);
            assert_eq!(l.data_offset(0), (1 + l.table_blocks) * BLOCK_BYTES);
        }
        let l = AreaLayout::new(32 * MIB_U).unwrap();
        assert_eq!((l.blocks, l.table_blocks), (8174, 17));
        assert!(AreaLayout::new(2 * BLOCK_BYTES).is_err());
        assert_eq!(AreaLayout::new(3 * BLOCK_BYTES).unwrap().blocks, 1);
    }

    #[test]
    fn header_and_table_blocks_round_trip() {
        let l = AreaLayout::new(8 * MIB_U).unwrap();
        let mut b = vec![0u64; BLOCK_WORDS];
        l.encode_header(&mut b);
        assert_eq!(decode_header(&b), HeaderState::Valid(l));
        b[2] ^= 1;
        assert!(matches!(decode_header(&b), HeaderState::Damaged(_)));
        assert_eq!(decode_header(&vec![0u64; BLOCK_WORDS]), HeaderState::Zero);
        b[0] = 7;
        assert_eq!(decode_header(&b), HeaderState::Foreign);

        let entries: Vec<u64> = (1..=ENTRIES_PER_TABLE_BLOCK).collect();
        encode_table_block(&mut b, 3, &entries);
        assert_eq!(decode_table_block(&b, 3), Some(&entries[..]));
        assert_eq!(decode_table_block(&b, 4), None, "misplaced table block");
        b[100] ^= 1 << 40;
        assert_eq!(decode_table_block(&b, 3), None, "damaged entry");
        // A short last table block: the rest is zero.
        encode_table_block(&mut b, 0, &[5, 6]);
        let got = decode_table_block(&b, 0).unwrap();
        assert_eq!(&got[..3], &[5, 6, 0]);
    }

    #[test]
    fn write_walk_covers_every_block_once_per_cycle() {
        for mib in [1u64, 3, 8] {
            let d = dev(mib);
            let (mut a, _) = d.open(None).unwrap();
            let n = a.layout().blocks;
            let mut seen = vec![false; n as usize];
            for _ in 0..n {
                let i = a.next_write_index();
                assert!(
                    !seen[i as usize],
                    "block {i} twice in one cycle (mib={mib})"
                );
                seen[i as usize] = true;
            }
            assert!(seen.iter().all(|&s| s));
        }
    }

    #[test]
    fn init_then_verify_clean() {
        let d = dev(4);
        let mut a = d.fresh(None);
        let l = a.layout();
        assert_eq!(l.mib(), 4);
        assert_eq!(a.written, l.blocks);
        assert!((0..l.blocks).all(|i| a.generation(i) == 1));
        // The header is on the device, and the data at its place.
        let head = d.peek(0, 8);
        assert_eq!(head, HEADER_MAGIC.to_ne_bytes());
        let blk = d.peek(l.data_offset(5), 24);
        assert_eq!(blk[8..16], 5u64.to_ne_bytes());
        assert_eq!(blk[16..24], 1u64.to_ne_bytes());

        assert!(sweep(&mut a).is_empty());
        assert_eq!(a.write_batch(300).unwrap(), 300);
        assert_eq!(a.write_batch(5000).unwrap(), MAX_BATCH.min(l.blocks));
        assert!(sweep(&mut a).is_empty());
        assert!(sweep(&mut a).is_empty());
        assert_eq!(a.mismatches, 0);
        assert_eq!(a.verified, 3 * l.blocks);
        assert!((0..l.blocks).any(|i| a.generation(i) == 2));
    }

    #[test]
    fn flipped_byte_is_detected_once_and_repaired() {
        let d = dev(2);
        let mut a = d.fresh(None);
        let off = a.layout().data_offset(17) + 1000;
        let mut b = d.peek(off, 1);
        b[0] ^= 0x10;
        d.poke(off, &b);
        let found = sweep(&mut a);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].block, Some(17));
        assert_eq!(found[0].kind, DiskMismatchKind::Data(MismatchKind::Torn));
        assert_eq!(
            found[0].to_string(),
            "FERRY-GUEST DISK-MISMATCH block=17 expected_gen=1 found_gen=1 kind=torn found_block=17"
        );
        assert_eq!(a.mismatches, 1);
        assert!(sweep(&mut a).is_empty(), "repaired");
    }

    #[test]
    fn stale_block_is_a_lost_write() {
        let d = dev(2);
        let mut a = d.fresh(None);
        let n = a.layout().blocks;
        a.write_batch(n).unwrap();
        assert!((0..n).all(|i| a.generation(i) == 2));
        // Block 9 lost its last write: it still holds generation 1.
        d.put_block(&a, 9, 1);
        let found = sweep(&mut a);
        assert_eq!(found.len(), 1, "{found:?}");
        let m = found[0];
        assert_eq!(
            (m.block, m.expected_gen, m.found_gen),
            (Some(9), 2, Some(1))
        );
        assert_eq!(m.kind, DiskMismatchKind::Data(MismatchKind::Stale));
        // Misplaced and garbage too.
        let mut w = vec![0u64; BLOCK_WORDS];
        pattern::fill_page(&mut w, 12, 2);
        d.poke(a.layout().data_offset(11), &words_to_bytes(&w));
        d.poke(a.layout().data_offset(13), &[0u8; BLOCK_SIZE]);
        let kinds: Vec<_> = sweep(&mut a).iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(kinds, ["misplaced", "garbage"]);
        assert!(sweep(&mut a).is_empty());
    }

    #[test]
    fn restart_resumes_and_verifies_clean() {
        let d = dev(4);
        let mut a = d.fresh(Some(3));
        for _ in 0..5 {
            a.write_batch(200).unwrap();
        }
        let gens: Vec<u64> = (0..a.layout().blocks).map(|i| a.generation(i)).collect();
        drop(a);

        let mut b = d.resume(Some(3));
        assert_eq!(b.layout().mib(), 3);
        let got: Vec<u64> = (0..b.layout().blocks).map(|i| b.generation(i)).collect();
        assert_eq!(got, gens, "the table on disk is what was committed");
        assert!(resume_sweep(&mut b).is_empty());
        assert_eq!(
            (b.verified, b.mismatches, b.ahead),
            (gens.len() as u64, 0, 0)
        );
        b.write_batch(100).unwrap();
        assert!(sweep(&mut b).is_empty());
        drop(b);
        let mut c = d.resume(Some(3));
        assert!(resume_sweep(&mut c).is_empty());
    }

    #[test]
    fn one_generation_ahead_is_accepted_after_restart_and_fixed() {
        let d = dev(2);
        let a = d.fresh(None);
        // A batch whose data reached the disk but whose table update did not.
        d.put_block(&a, 3, 2);
        d.put_block(&a, 500, 2);
        // Two ahead is not a write in flight: a mismatch.
        d.put_block(&a, 4, 3);
        let l = a.layout();
        drop(a);

        let mut b = d.resume(None);
        let found = resume_sweep(&mut b);
        assert_eq!(b.ahead, 2);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].block, Some(4));
        assert_eq!(found[0].kind, DiskMismatchKind::Data(MismatchKind::Future));
        assert_eq!(
            (b.generation(3), b.generation(500), b.generation(4)),
            (2, 2, 1)
        );
        assert!(sweep(&mut b).is_empty(), "table and data agree afterwards");
        drop(b);
        // The fix is on the disk: the next restart is clean with nothing ahead.
        let mut c = d.resume(None);
        assert!(resume_sweep(&mut c).is_empty());
        assert_eq!((c.ahead, c.mismatches), (0, 0));
        assert_eq!(c.generation(500), 2);
        assert_eq!(c.layout(), l);
    }

    #[test]
    fn stale_after_restart_is_a_mismatch() {
        let d = dev(2);
        let mut a = d.fresh(None);
        let n = a.layout().blocks;
        a.write_batch(n).unwrap();
        a.write_batch(n).unwrap();
        // The table says 3 (committed after the data), the block went back to 2: lost write.
        d.put_block(&a, 100, 2);
        drop(a);
        let mut b = d.resume(None);
        let found = resume_sweep(&mut b);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].expected_gen,
                found[0].found_gen,
                found[0].kind.as_str()
            ),
            (3, Some(2), "stale")
        );
        assert_eq!(b.ahead, 0);
        assert!(sweep(&mut b).is_empty(), "repaired");
    }

    #[test]
    fn damaged_table_block_after_restart() {
        let d = dev(2);
        let a = d.fresh(None);
        let l = a.layout();
        assert!(l.table_blocks >= 1);
        drop(a);
        d.poke(l.table_offset(0) + 64, &[0xff; 8]);
        let mut b = d.resume(None);
        let found = resume_sweep(&mut b);
        let covered = ENTRIES_PER_TABLE_BLOCK.min(l.blocks);
        assert_eq!(found.len() as u64, covered);
        assert!(found.iter().all(|m| m.kind == DiskMismatchKind::Table));
        // Consistent blocks kept their generation; the table block was rewritten.
        assert_eq!(b.generation(0), 1);
        assert!(sweep(&mut b).is_empty());
        drop(b);
        assert!(resume_sweep(&mut d.resume(None)).is_empty());
    }

    #[test]
    fn lost_table_write_is_caught_while_running() {
        let d = dev(2);
        let mut a = d.fresh(None);
        let l = a.layout();
        let before = d.peek(l.table_offset(0), BLOCK_SIZE);
        // Rewrite every block, then put the old table block 0 back (its write was lost).
        a.write_batch(l.blocks).unwrap();
        d.poke(l.table_offset(0), &before);
        let found = sweep(&mut a);
        assert_eq!(found.len() as u64, ENTRIES_PER_TABLE_BLOCK.min(l.blocks));
        assert!(found
            .iter()
            .all(|m| m.kind == DiskMismatchKind::Table && m.found_gen == Some(1)));
        assert!(sweep(&mut a).is_empty(), "table rewritten");
        // The header too.
        d.poke(16, &[1]);
        let found = sweep(&mut a);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, DiskMismatchKind::Header);
        assert!(found[0].to_string().contains("block=header "));
        assert!(sweep(&mut a).is_empty());
    }

    #[test]
    fn another_area_size_is_refused_not_reformatted() {
        let d = dev(8);
        let a = d.fresh(Some(4));
        drop(a);
        let header = d.peek(0, BLOCK_SIZE);
        let err = d.open(Some(8)).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, DiskError::Refused(_)), "{msg}");
        assert!(
            msg.contains("4 MiB") && msg.contains("ferry.disk_mib=4"),
            "{msg}"
        );
        // The default (whole device) is another size too.
        assert!(matches!(d.open(None), Err(DiskError::Refused(_))));
        assert_eq!(d.peek(0, BLOCK_SIZE), header, "nothing was written");
        // With the right size it resumes.
        assert!(resume_sweep(&mut d.resume(Some(4))).is_empty());
    }

    #[test]
    fn foreign_or_damaged_header_is_refused() {
        let d = dev(2);
        d.poke(1024, b"\x53\xef not ferry");
        let err = d.open(None).err().unwrap();
        assert!(err.to_string().contains("holds other data"), "{err}");
        assert_eq!(&d.peek(1024, 2), b"\x53\xef");

        let d = dev(2);
        drop(d.fresh(None));
        d.poke(8, &[9]);
        let err = d.open(None).err().unwrap();
        assert!(
            err.to_string().contains("damaged Ferry disk header"),
            "{err}"
        );
    }

    #[test]
    fn size_errors() {
        let d = dev(2);
        let err = d.open(Some(3)).err().unwrap();
        assert!(err.to_string().contains("ferry.disk_mib=3 but"), "{err}");
        let small = dev(0);
        let err = small.open(None).err().unwrap();
        assert!(err.to_string().contains("at least 1 MiB"), "{err}");
        let err = wait_for_device(
            Path::new("/nonexistent/ferry-vdz"),
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn run_initialises_then_resumes() {
        let d = dev(3);
        let settings = DiskSettings {
            path: d.path.clone(),
            mib: Some(2),
            rate_mib: 4.0,
        };
        let opts = DiskRunOptions {
            max_ticks: Some(2),
            direct: d.direct,
            device_wait: Duration::from_secs(1),
        };
        let mut out = Vec::new();
        let a = run(&settings, &mut out, &opts).unwrap();
        let text = String::from_utf8(out).unwrap();
        let s = ConsoleSummary::parse(&text);
        assert_eq!(
            s.disk_ready.map(|r| (r.mib, r.rate_mib)),
            Some((2, 4.0)),
            "{text}"
        );
        assert_eq!(s.disk_status_lines, 2, "{text}");
        let last = s.disk_last.unwrap();
        assert_eq!((last.mismatches, last.written), (0, a.written));
        // 4 MiB/s = 1024 blocks/s after the 510-block initialisation.
        assert!(last.written > a.layout().blocks + 500, "{text}");
        assert!(last.verified > 0, "{text}");
        assert!(
            text.starts_with("FERRY-GUEST disk ready mib=2 rate_mib=4\n"),
            "{text}"
        );
        drop(a);

        let mut out = Vec::new();
        let a = run(&settings, &mut out, &opts).unwrap();
        let text = String::from_utf8(out).unwrap();
        let s = ConsoleSummary::parse(&text);
        let blocks = a.layout().blocks;
        assert_eq!(s.disk_resumed, Some(blocks), "{text}");
        assert_eq!(s.disk_verified_after_restart, Some((blocks, 0)), "{text}");
        assert_eq!(s.disk_ready, None);
        assert_eq!(s.disk_last.map(|l| l.mismatches), Some(0));
        assert!(text.starts_with(&format!("FERRY-GUEST disk resume blocks={blocks}\n")));
    }
}
