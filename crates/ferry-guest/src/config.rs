//! Settings from the kernel command line.
//!
//! The guest has no other channel for configuration: the host puts `ferry.<key>=<value>` words
//! on the kernel command line (see `ferry_image::kernel_cmdline`) and the workload reads
//! `/proc/cmdline`. Parsing is generic: every `ferry.*` word is collected, the known keys are
//! validated, and unknown keys are kept in [`Config::extra`] for later features (network, disk)
//! instead of being rejected, so an older guest binary still boots with a newer host.

use std::collections::BTreeMap;
use std::fmt;

/// Default size of the checked memory area.
pub const DEFAULT_MEM_MIB: u64 = 256;
/// Default rewrite rate.
pub const DEFAULT_RATE_MIB: f64 = 10.0;
/// Largest accepted `ferry.mem_mib` (1 TiB): keeps byte counts far from overflow.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Prefix of the words this crate reads.
pub const KEY_PREFIX: &str = "ferry.";

/// Workload settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `ferry.mem_mib`: MiB of memory to fill and check.
    pub mem_mib: u64,
    /// `ferry.rate_mib`: MiB per second rewritten; `0` fills once and then only verifies.
    pub rate_mib: f64,
    /// Every other `ferry.*` word, keyed without the `ferry.` prefix (a bare word has value "").
    pub extra: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_mib: DEFAULT_MEM_MIB,
            rate_mib: DEFAULT_RATE_MIB,
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
                _ => {
                    cfg.extra.insert(name.to_string(), value.to_string());
                }
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
            "ferry.mem_mib=8 ferry.net_ip=10.0.0.2/24 ferry.disk ferry.label=\"a b\" other=1",
        )
        .unwrap();
        assert_eq!(c.mem_mib, 8);
        assert_eq!(c.get("net_ip"), Some("10.0.0.2/24"));
        assert_eq!(c.get("disk"), Some(""));
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
    fn word_splitting() {
        assert_eq!(
            words("  a=1\tb \"c=d e\" f=\"g h\"\n"),
            vec![("a", "1"), ("b", ""), ("c", "d e"), ("f", "g h")]
        );
        assert!(words("").is_empty());
        assert!(words(" \n").is_empty());
    }
}
