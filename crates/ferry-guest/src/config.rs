//! Settings from the kernel command line.
//!
//! The guest has no other channel for configuration: the host puts `ferry.<key>=<value>` words
//! on the kernel command line (see `ferry_image::kernel_cmdline`) and the workload reads
//! `/proc/cmdline`. Parsing is generic: every `ferry.*` word is collected, the known keys are
//! validated, and unknown keys are kept in [`Config::extra`] for later features instead of
//! being rejected, so an older guest binary still boots with a newer host.
//!
//! Known keys:
//!
//! | key | value | default |
//! |-----|-------|---------|
//! | `ferry.mem_mib` | MiB of memory to fill and check, 1..=1048576 | 256 |
//! | `ferry.rate_mib` | MiB/s rewritten, finite, >= 0 | 10 |
//! | `ferry.ip` | `ADDR/PREFIX` of `eth0`, IPv4 unicast, prefix 1..=32 | none: no networking |
//! | `ferry.gw` | IPv4 default gateway, inside `ferry.ip`'s subnet (needs `ferry.ip`) | none |
//! | `ferry.port` | TCP port of the echo service, 0 disables it | 7000 |
//! | `ferry.disk` | block device name under `/dev` (e.g. `vda`) for the disk workload | none: no disk mode |
//! | `ferry.disk_mib` | MiB of the disk to use, from its start, 1..=65536 (needs `ferry.disk`) | whole device, at most 1024 |
//! | `ferry.disk_rate_mib` | MiB/s of the disk rewritten, finite, >= 0 (needs `ferry.disk`) | 2 |
//!
//! The disk workload ([`crate::disk`]) *initialises* (overwrites) the area of `ferry.disk`
//! unless it already holds a Ferry disk header; it refuses a device whose first 4 KiB are
//! neither zero nor a Ferry header, so it never overwrites a disk holding a file system.
//!
//! `ferry.ip` and `ferry.gw` are applied by `/init` (busybox `ip`) before the workload starts;
//! the workload validates them too so that a bad value shows up as a `config-error` line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Default size of the checked memory area.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// Default rewrite rate.
pub const DEFAULT_RATE_MIB: f64 = 10.0;
/// Largest accepted `ferry.mem_mib` (1 TiB): keeps byte counts far from overflow.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Default port of the TCP service (see [`crate::service`]).
pub const DEFAULT_PORT: u16 = 7000;
/// Default disk rewrite rate (`ferry.disk_rate_mib`).
pub const DEFAULT_DISK_RATE_MIB: f64 = 2.0;
/// Largest area used when `ferry.disk_mib` is not given: the whole device up to this size.
pub const DEFAULT_MAX_DISK_MIB: u64 = 1024;
/// Largest accepted `ferry.disk_mib` (64 GiB): the generation table lives in guest memory
/// (8 bytes per 4 KiB block, 128 MiB at this size).
pub const MAX_DISK_MIB: u64 = 1 << 16;
/// Longest accepted `ferry.disk` device name.
pub const MAX_DISK_NAME_LEN: usize = 32;
/// Prefix of the words this crate reads.
pub const KEY_PREFIX: &str = "ferry.";

/// An IPv4 interface address with its prefix length, as in `172.30.5.100/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The interface's own address.
    pub addr: Ipv4Addr,
    /// Prefix length, 1..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Network mask of the prefix, e.g. `255.255.255.0` for `/24`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// True if `other` is in this address's subnet.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let m = mask_bits(self.prefix);
        u32::from(self.addr) & m == u32::from(other) & m
    }
}

fn mask_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// Parses `A.B.C.D/P`: a unicast address (not 0.0.0.0, loopback, multicast, broadcast or
    /// reserved), decimal octets without leading zeros (busybox would read `010` as octal), and
    /// a prefix of 1..=32 that leaves the address a host of its subnet (not the network or
    /// broadcast address, except for /31 and /32).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or("expected ADDR/PREFIX, e.g. 172.30.5.100/24")?;
        let addr = parse_unicast(addr)?;
        let prefix: u8 = match prefix.parse() {
            Ok(p) if (1..=32).contains(&p) && !prefix.starts_with(['0', '+']) => p,
            _ => return Err(format!("prefix {prefix:?} must be a whole number 1..=32")),
        };
        let cidr = Ipv4Cidr { addr, prefix };
        if prefix <= 30 {
            let host = u32::from(addr) & !mask_bits(prefix);
            if host == 0 || host == !mask_bits(prefix) {
                return Err(format!(
                    "{addr} is the network or broadcast address of its /{prefix} subnet"
                ));
            }
        }
        Ok(cidr)
    }
}

/// Parses a dotted-quad IPv4 unicast address.
fn parse_unicast(s: &str) -> Result<Ipv4Addr, String> {
    // std's parser already refuses leading zeros, signs and anything but four decimal octets.
    let addr: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address like 172.30.5.100"))?;
    if addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.octets()[0] >= 240
    {
        return Err(format!("{addr} is not a unicast address"));
    }
    Ok(addr)
}

/// Workload settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `ferry.mem_mib`: MiB of memory to fill and check.
    pub mem_mib: u64,
    /// `ferry.rate_mib`: MiB per second rewritten; `0` fills once and then only verifies.
    pub rate_mib: f64,
    /// `ferry.ip`: address of `eth0`; `None` means the guest has no network.
    pub ip: Option<Ipv4Cidr>,
    /// `ferry.gw`: default gateway.
    pub gw: Option<Ipv4Addr>,
    /// `ferry.port`: TCP service port, `0` = no service. Only used when [`Config::ip`] is set.
    pub port: u16,
    /// `ferry.disk`: name of the block device under `/dev` for the disk workload; `None`
    /// means no disk mode.
    pub disk: Option<String>,
    /// `ferry.disk_mib`: MiB of the device to use from its start; `None` = the whole device,
    /// at most [`DEFAULT_MAX_DISK_MIB`].
    pub disk_mib: Option<u64>,
    /// `ferry.disk_rate_mib`: MiB per second of the disk rewritten; `0` writes the area once
    /// and then only verifies.
    pub disk_rate_mib: f64,
    /// Every other `ferry.*` word, keyed without the `ferry.` prefix (a bare word has value "").
    pub extra: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_mib: DEFAULT_MEM_MIB,
            rate_mib: DEFAULT_RATE_MIB,
            ip: None,
            gw: None,
            port: DEFAULT_PORT,
            disk: None,
            disk_mib: None,
            disk_rate_mib: DEFAULT_DISK_RATE_MIB,
            extra: BTreeMap::new(),
        }
    }
}

/// One invalid setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Full key as written, e.g. `ferry.mem_mib`.
    pub key: String,
    /// Value as written.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    /// Console form: `FERRY-GUEST config-error key=ferry.mem_mib value="x" reason=...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} config-error key={} value={:?} reason={}",
            crate::status::PREFIX,
            self.key,
            self.value,
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses a kernel command line. Returns every invalid known key, not only the first, so
    /// one boot shows all mistakes.
    pub fn parse(cmdline: &str) -> Result<Config, Vec<ConfigError>> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        let mut gw_word = None;
        // Disk settings that only mean something with ferry.disk, checked at the end.
        let mut disk_words = Vec::new();
        for (key, value) in words(cmdline) {
            let Some(name) = key.strip_prefix(KEY_PREFIX) else {
                continue;
            };
            // Later words override earlier ones, as the kernel does for its own parameters.
            match name {
                "mem_mib" => match parse_mem_mib(value) {
                    Ok(v) => cfg.mem_mib = v,
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "rate_mib" => match parse_rate_mib(value) {
                    Ok(v) => cfg.rate_mib = v,
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "ip" => match value.parse::<Ipv4Cidr>() {
                    Ok(v) => cfg.ip = Some(v),
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "gw" => match parse_unicast(value) {
                    Ok(v) => {
                        gw_word = Some((key, value));
                        cfg.gw = Some(v);
                    }
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "port" => match parse_port(value) {
                    Ok(v) => cfg.port = v,
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "disk" => match parse_disk_name(value) {
                    Ok(v) => cfg.disk = Some(v),
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "disk_mib" => match parse_disk_mib(value) {
                    Ok(v) => {
                        disk_words.push((key, value));
                        cfg.disk_mib = Some(v);
                    }
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                "disk_rate_mib" => match parse_rate_mib(value) {
                    Ok(v) => {
                        disk_words.push((key, value));
                        cfg.disk_rate_mib = v;
                    }
                    Err(reason) => errors.push(error(key, value, reason)),
                },
                _ => {
                    cfg.extra.insert(name.to_string(), value.to_string());
                }
            }
        }
        // Checked once all words are read: ferry.ip may come after ferry.gw.
        if let (Some((key, value)), Some(gw)) = (gw_word, cfg.gw) {
            let reason = match cfg.ip {
                None => Some("needs ferry.ip (a gateway without an address is never used)".into()),
                Some(ip) if ip.addr == gw => Some(format!("is the guest's own address {ip}")),
                Some(ip) if !ip.contains(gw) => Some(format!(
                    "{gw} is outside the guest's subnet {}/{} (ferry.ip={ip})",
                    Ipv4Addr::from(u32::from(ip.addr) & u32::from(ip.netmask())),
                    ip.prefix
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                errors.push(error(key, value, reason));
            }
        }
        // Like ferry.gw without ferry.ip: a disk size or rate without a disk is a mistake.
        if cfg.disk.is_none() && !errors.iter().any(|e| e.key == "ferry.disk") {
            for (key, value) in disk_words {
                errors.push(error(
                    key,
                    value,
                    "needs ferry.disk (the block device to use, e.g. ferry.disk=vda)".into(),
                ));
            }
        }
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors)
        }
    }

    /// Value of an unknown (not yet interpreted) `ferry.<name>` key.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.extra.get(name).map(String::as_str)
    }

    /// The port the TCP service should listen on: `None` without networking or with port 0.
    pub fn service_port(&self) -> Option<u16> {
        (self.ip.is_some() && self.port != 0).then_some(self.port)
    }

    /// Settings of the disk workload, if `ferry.disk` is set: the device is `/dev/<name>`.
    pub fn disk_settings(&self) -> Option<crate::disk::DiskSettings> {
        let name = self.disk.as_ref()?;
        Some(crate::disk::DiskSettings {
            path: std::path::Path::new("/dev").join(name),
            mib: self.disk_mib,
            rate_mib: self.disk_rate_mib,
        })
    }

    /// Number of 4 KiB pages in the checked area.
    pub fn pages(&self) -> u64 {
        self.mem_mib * (1024 * 1024 / crate::pattern::PAGE_SIZE as u64)
    }
}

fn error(key: &str, value: &str, reason: String) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    }
}

fn parse_mem_mib(value: &str) -> Result<u64, String> {
    let v: u64 = value
        .parse()
        .map_err(|_| format!("expected a whole number of MiB (1..={MAX_MEM_MIB})"))?;
    if v == 0 || v > MAX_MEM_MIB {
        return Err(format!("must be between 1 and {MAX_MEM_MIB} MiB"));
    }
    Ok(v)
}

fn parse_rate_mib(value: &str) -> Result<f64, String> {
    let v: f64 = value
        .parse()
        .map_err(|_| "expected a number of MiB per second, e.g. 10 or 2.5".to_string())?;
    if !v.is_finite() || v < 0.0 {
        return Err("must be a finite number >= 0 (0 = fill once, then only verify)".to_string());
    }
    Ok(v)
}

/// A device name under `/dev`: letters, digits, `-` and `_` (e.g. `vda`, `nvme0n1`), so it
/// cannot name a path elsewhere.
fn parse_disk_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_DISK_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "expected a block device name under /dev like vda (1..={MAX_DISK_NAME_LEN} letters, \
             digits, '-' or '_')"
        ))
    }
}

fn parse_disk_mib(value: &str) -> Result<u64, String> {
    let v: u64 = value
        .parse()
        .map_err(|_| format!("expected a whole number of MiB (1..={MAX_DISK_MIB})"))?;
    if v == 0 || v > MAX_DISK_MIB {
        return Err(format!("must be between 1 and {MAX_DISK_MIB} MiB"));
    }
    Ok(v)
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(p) if !value.starts_with('+') => Ok(p),
        _ => Err("expected a TCP port number 0..=65535 (0 disables the service)".to_string()),
    }
}

/// Splits a command line into `(key, value)` words the way the kernel does: whitespace
/// separated, double quotes group spaces into one word (and are removed), `key` without `=`
/// has an empty value.
pub fn words(cmdline: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let bytes = cmdline.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut in_quotes = false;
        while i < bytes.len() && (in_quotes || !bytes[i].is_ascii_whitespace()) {
            if bytes[i] == b'"' {
                in_quotes = !in_quotes;
            }
            i += 1;
        }
        // Slicing at ASCII bytes keeps UTF-8 boundaries intact.
        let word = &cmdline[start..i];
        let (key, value) = match word.find('=') {
            Some(eq) => (&word[..eq], &word[eq + 1..]),
            None => (word, ""),
        };
        out.push((unquote(key), unquote(value)));
    }
    out
}

fn unquote(s: &str) -> &str {
    let s = s.strip_prefix('"').unwrap_or(s);
    s.strip_suffix('"').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_absent() {
        let c = Config::parse("BOOT_IMAGE=/vmlinuz console=ttyS0 quiet\n").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.rate_mib, 10.0);
        assert_eq!(c.pages(), 256 * 256);
    }

    #[test]
    fn good_values() {
        let c = Config::parse("console=ttyS0 ferry.mem_mib=64 ferry.rate_mib=2.5").unwrap();
        assert_eq!(c.mem_mib, 64);
        assert_eq!(c.rate_mib, 2.5);
        let c = Config::parse("ferry.rate_mib=0 ferry.mem_mib=1").unwrap();
        assert_eq!(c.rate_mib, 0.0);
        assert_eq!(c.mem_mib, 1);
        // Later words win.
        let c = Config::parse("ferry.mem_mib=1 ferry.mem_mib=2").unwrap();
        assert_eq!(c.mem_mib, 2);
    }

    #[test]
    fn unknown_keys_are_kept_not_rejected() {
        let c = Config::parse(
            "ferry.mem_mib=8 ferry.net_ip=10.0.0.2/24 ferry.flag ferry.label=\"a b\" other=1",
        )
        .unwrap();
        assert_eq!(c.mem_mib, 8);
        assert_eq!(c.get("net_ip"), Some("10.0.0.2/24"));
        assert_eq!(c.get("flag"), Some(""));
        assert_eq!(c.get("label"), Some("a b"));
        assert_eq!(c.get("other"), None);
        assert_eq!(c.extra.len(), 3);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let errs = Config::parse("ferry.mem_mib=lots ferry.rate_mib=-1 ferry.x=1").unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].key, "ferry.mem_mib");
        assert_eq!(errs[0].value, "lots");
        assert!(errs[0].reason.contains("whole number"));
        assert_eq!(errs[1].key, "ferry.rate_mib");
        assert!(errs[1].reason.contains(">= 0"));
        let line = errs[0].to_string();
        assert!(line.starts_with("FERRY-GUEST config-error key=ferry.mem_mib value=\"lots\""));

        for bad in [
            "ferry.mem_mib=0",
            "ferry.mem_mib=",
            "ferry.mem_mib=-5",
            "ferry.mem_mib=1.5",
            "ferry.mem_mib=99999999999",
            "ferry.rate_mib=nan",
            "ferry.rate_mib=inf",
            "ferry.rate_mib=",
            "ferry.rate_mib=fast",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn network_settings() {
        let c = Config::parse("console=ttyS0 ferry.mem_mib=8").unwrap();
        assert_eq!((c.ip, c.gw, c.port), (None, None, DEFAULT_PORT));
        assert_eq!(c.service_port(), None, "no address, no service");

        let c =
            Config::parse("ferry.ip=172.30.5.100/24 ferry.gw=172.30.5.1 ferry.port=7001").unwrap();
        let ip = c.ip.unwrap();
        assert_eq!(ip.addr, Ipv4Addr::new(172, 30, 5, 100));
        assert_eq!(ip.prefix, 24);
        assert_eq!(ip.to_string(), "172.30.5.100/24");
        assert_eq!(ip.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gw, Some(Ipv4Addr::new(172, 30, 5, 1)));
        assert_eq!(c.service_port(), Some(7001));
        assert!(c.extra.is_empty());

        // Order does not matter; default port; port 0 disables the service.
        let c = Config::parse("ferry.gw=10.0.2.2 ferry.ip=10.0.2.15/24").unwrap();
        assert_eq!(c.service_port(), Some(7000));
        let c = Config::parse("ferry.ip=10.0.2.15/24 ferry.port=0").unwrap();
        assert_eq!(c.service_port(), None);
        // Quoted words, as the kernel allows.
        let c = Config::parse("\"ferry.ip=10.1.2.3/32\" ferry.port=\"65535\"").unwrap();
        assert_eq!(c.ip.map(|i| i.prefix), Some(32));
        assert_eq!(c.port, 65535);
        for good in [
            "10.0.0.1/8",
            "192.168.1.254/24",
            "10.0.0.0/31",
            "10.0.0.1/31",
            "1.2.3.4/1",
        ] {
            assert!(good.parse::<Ipv4Cidr>().is_ok(), "{good}");
        }
    }

    #[test]
    fn bad_network_settings_are_reported() {
        for bad in [
            "ferry.ip=",
            "ferry.ip=10.0.2.15",
            "ferry.ip=10.0.2.15/",
            "ferry.ip=10.0.2.15/0",
            "ferry.ip=10.0.2.15/33",
            "ferry.ip=10.0.2.15/024",
            "ferry.ip=10.0.2.15/+24",
            "ferry.ip=10.0.2/24",
            "ferry.ip=10.0.2.256/24",
            "ferry.ip=010.0.2.15/24",
            "ferry.ip=10.0.2.15/24/1",
            "ferry.ip=host/24",
            "ferry.ip=::1/128",
            "ferry.ip=0.0.0.0/8",
            "ferry.ip=127.0.0.1/8",
            "ferry.ip=224.0.0.1/4",
            "ferry.ip=255.255.255.255/32",
            "ferry.ip=240.0.0.1/8",
            "ferry.ip=10.0.2.0/24",
            "ferry.ip=10.0.2.255/24",
            "ferry.ip=10.0.2.15/24 ferry.gw=",
            "ferry.ip=10.0.2.15/24 ferry.gw=10.0.3.1",
            "ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.15",
            "ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.2/24",
            "ferry.ip=10.0.2.15/24 ferry.gw=224.0.0.1",
            "ferry.gw=10.0.2.2",
            "ferry.ip=10.0.2.15/24 ferry.port=65536",
            "ferry.ip=10.0.2.15/24 ferry.port=-1",
            "ferry.ip=10.0.2.15/24 ferry.port=+80",
            "ferry.ip=10.0.2.15/24 ferry.port=http",
            "ferry.ip=10.0.2.15/24 ferry.port=",
        ] {
            let errs = Config::parse(bad).expect_err(bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        }
        let errs = Config::parse("ferry.ip=10.0.2.15/24 ferry.gw=10.0.3.1").unwrap_err();
        assert_eq!(
            errs[0].to_string(),
            "FERRY-GUEST config-error key=ferry.gw value=\"10.0.3.1\" reason=10.0.3.1 is \
             outside the guest's subnet 10.0.2.0/24 (ferry.ip=10.0.2.15/24)"
        );
        let errs = Config::parse("ferry.ip=10.0.2.15").unwrap_err();
        assert!(errs[0].to_string().contains("key=ferry.ip"), "{errs:?}");
        assert!(errs[0].reason.contains("ADDR/PREFIX"), "{errs:?}");
        let errs = Config::parse("ferry.gw=10.0.2.2").unwrap_err();
        assert!(errs[0].reason.contains("needs ferry.ip"), "{errs:?}");
        // A bad address and a gateway: both words are reported (the gateway lacks an address).
        let errs = Config::parse("ferry.ip=x ferry.gw=10.0.2.2").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn disk_settings() {
        let c = Config::parse("console=ttyS0").unwrap();
        assert_eq!((c.disk.as_deref(), c.disk_mib), (None, None));
        assert_eq!(c.disk_rate_mib, DEFAULT_DISK_RATE_MIB);
        assert!(c.disk_settings().is_none(), "no ferry.disk, no disk mode");

        let c = Config::parse("ferry.disk=vda").unwrap();
        let d = c.disk_settings().unwrap();
        assert_eq!(d.path, std::path::Path::new("/dev/vda"));
        assert_eq!((d.mib, d.rate_mib), (None, 2.0));

        // Order does not matter; rate 0 writes once and then only verifies.
        let c =
            Config::parse("ferry.disk_rate_mib=0 ferry.disk_mib=32 ferry.disk=nvme0n1").unwrap();
        let d = c.disk_settings().unwrap();
        assert_eq!(d.path, std::path::Path::new("/dev/nvme0n1"));
        assert_eq!((d.mib, d.rate_mib), (Some(32), 0.0));
        assert!(c.extra.is_empty());
        let c =
            Config::parse("ferry.disk=vdb ferry.disk_mib=65536 ferry.disk_rate_mib=2.5").unwrap();
        assert_eq!((c.disk_mib, c.disk_rate_mib), (Some(65536), 2.5));
    }

    #[test]
    fn bad_disk_settings_are_reported() {
        for bad in [
            "ferry.disk",
            "ferry.disk=",
            "ferry.disk=../sda",
            "ferry.disk=/dev/vda",
            "ferry.disk=v.da",
            "ferry.disk=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "ferry.disk=vda ferry.disk_mib=0",
            "ferry.disk=vda ferry.disk_mib=",
            "ferry.disk=vda ferry.disk_mib=1.5",
            "ferry.disk=vda ferry.disk_mib=-1",
            "ferry.disk=vda ferry.disk_mib=65537",
            "ferry.disk=vda ferry.disk_rate_mib=-1",
            "ferry.disk=vda ferry.disk_rate_mib=nan",
            "ferry.disk=vda ferry.disk_rate_mib=inf",
            "ferry.disk=vda ferry.disk_rate_mib=",
            "ferry.disk_mib=32",
            "ferry.disk_rate_mib=2",
        ] {
            let errs = Config::parse(bad).expect_err(bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        }
        let errs = Config::parse("ferry.disk_mib=32 ferry.disk_rate_mib=1").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].reason.contains("needs ferry.disk"), "{errs:?}");
        assert_eq!(
            errs[1].to_string(),
            "FERRY-GUEST config-error key=ferry.disk_rate_mib value=\"1\" reason=needs \
             ferry.disk (the block device to use, e.g. ferry.disk=vda)"
        );
        // A bad device name is reported once, not again for the size that depends on it.
        let errs = Config::parse("ferry.disk=a/b ferry.disk_mib=8").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].reason.contains("under /dev"), "{errs:?}");
    }

    #[test]
    fn word_splitting() {
        assert_eq!(
            words("  a=1\tb \"c=d e\" f=\"g h\"\n"),
            vec![("a", "1"), ("b", ""), ("c", "d e"), ("f", "g h")]
        );
        assert!(words("").is_empty());
        assert!(words(" \n").is_empty());
    }
}
