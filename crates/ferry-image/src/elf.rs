//! Just enough ELF64 reading for two questions: is an executable statically linked (no
//! `PT_INTERP` program header), and what does a kernel module depend on (`depends=` in its
//! `.modinfo` section). A full ELF crate would be overkill for that.

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
const PT_INTERP: u32 = 3;

fn u16_at(b: &[u8], off: usize) -> Result<u16, String> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated ELF file (need byte {})", off + 2))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated ELF file (need byte {})", off + 4))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, String> {
    let s = b
        .get(off..off + 8)
        .ok_or_else(|| format!("truncated ELF file (need byte {})", off + 8))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn usize_of(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("ELF offset {v} out of range"))
}

/// What we need to know about an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_type`: 1 relocatable (module), 2 executable, 3 shared object / PIE.
    pub elf_type: u16,
    /// `e_machine`.
    pub machine: u16,
    /// True when a `PT_INTERP` program header names a dynamic loader.
    pub has_interp: bool,
}

/// Checks the header of a 64-bit little-endian ELF file and reads its program headers.
pub fn parse(b: &[u8]) -> Result<ElfInfo, String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF file".to_string());
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_string());
    }
    let elf_type = u16_at(b, 16)?;
    let machine = u16_at(b, 18)?;
    let phoff = usize_of(u64_at(b, 32)?)?;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    let mut has_interp = false;
    for i in 0..phnum {
        if u32_at(b, phoff + i * phentsize)? == PT_INTERP {
            has_interp = true;
        }
    }
    Ok(ElfInfo {
        elf_type,
        machine,
        has_interp,
    })
}

/// Contents of the section called `name`, if present.
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    parse(b)?;
    let shoff = usize_of(u64_at(b, 40)?)?;
    let shentsize = usize::from(u16_at(b, 58)?);
    let shnum = usize::from(u16_at(b, 60)?);
    let shstrndx = usize::from(u16_at(b, 62)?);
    if shnum == 0 {
        return Ok(None);
    }
    let header = |i: usize| -> Result<(u32, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(b, h)?,
            usize_of(u64_at(b, h + 24)?)?,
            usize_of(u64_at(b, h + 32)?)?,
        ))
    };
    let slice = |off: usize, size: usize| {
        off.checked_add(size)
            .and_then(|end| b.get(off..end))
            .ok_or_else(|| "ELF section extends past the end of the file".to_string())
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = slice(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let Some(rest) = names.get(name_off as usize..) else {
            continue;
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return slice(off, size).map(Some);
        }
    }
    Ok(None)
}

/// Modules a kernel module depends on, from the `depends=` entry of its `.modinfo` section
/// (what depmod would write to `modules.dep`; Debian's package ships no `modules.dep`, since
/// depmod runs at install time).
pub fn module_depends(b: &[u8]) -> Result<Vec<String>, String> {
    let info = section(b, ".modinfo")?.ok_or("kernel module has no .modinfo section")?;
    for entry in info.split(|&c| c == 0) {
        if let Some(v) = entry.strip_prefix(b"depends=") {
            let v = std::str::from_utf8(v).map_err(|_| "depends= is not UTF-8".to_string())?;
            return Ok(v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(crate::kernel::normalize_module_name)
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_executables() {
        // busybox-static is a prerequisite of the image builder; /bin/ls is dynamic on Debian.
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
        let info = parse(&busybox).unwrap();
        assert_eq!(info.machine, EM_X86_64);
        assert!(!info.has_interp);
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(parse(&ls).unwrap().has_interp);
    }

    #[test]
    fn rejects_non_elf_and_truncated() {
        assert!(parse(b"#!/bin/sh\necho hi\n").is_err());
        let mut b = std::fs::read("/bin/ls").unwrap();
        b.truncate(80);
        assert!(parse(&b).is_err() || section(&b, ".text").is_err());
    }

    #[test]
    fn finds_sections() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let interp = section(&ls, ".interp").unwrap().expect(".interp present");
        assert!(interp.starts_with(b"/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(section(&ls, ".no-such-section").unwrap(), None);
        // An executable has no .modinfo.
        assert!(module_depends(&ls).is_err());
    }
}
