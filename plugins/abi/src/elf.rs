//! A check of a plugin library's file before it is handed to the dynamic loader.
//!
//! `dlopen` maps the segments a shared library's program headers name; a file truncated after its headers
//! (an interrupted copy or download) maps pages past its end, and the first access to them kills the process
//! with `SIGBUS`, with no message. [`check_shared_library`] reads only the headers and refuses, naming the
//! file, anything that is not a complete ELF shared object for this machine: wrong magic, class (32/64-bit),
//! byte order or machine, not a shared object (`ET_DYN`), a program or section header table past the end of
//! the file, or any segment whose bytes lie past it. On other platforms than Linux it only checks that the
//! path is a regular file.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Why a file is not a loadable shared library for this machine.
pub type Reason = String;

/// ELF `e_machine` of the machine this host was built for, where known.
fn host_machine() -> Option<(u16, &'static str)> {
    if cfg!(target_arch = "x86_64") {
        Some((62, "x86-64"))
    } else if cfg!(target_arch = "aarch64") {
        Some((183, "AArch64"))
    } else if cfg!(target_arch = "x86") {
        Some((3, "x86"))
    } else if cfg!(target_arch = "arm") {
        Some((40, "ARM"))
    } else if cfg!(target_arch = "riscv64") {
        Some((243, "RISC-V"))
    } else if cfg!(target_arch = "powerpc64") {
        Some((21, "PowerPC64"))
    } else if cfg!(target_arch = "s390x") {
        Some((22, "s390x"))
    } else {
        None
    }
}

/// Read a little- or big-endian unsigned integer of `N` bytes at `at` of `b`.
fn uint<const N: usize>(b: &[u8], at: usize, little: bool) -> u64 {
    let mut v = 0u64;
    for i in 0..N {
        let byte = if little { b[at + N - 1 - i] } else { b[at + i] } as u64;
        v = (v << 8) | byte;
    }
    v
}

/// Check that `path` is a complete ELF shared object for this machine (see the module documentation).
pub fn check_shared_library(path: &Path) -> Result<(), Reason> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let len = meta.len();
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut ident = [0u8; 64];
    let n = f.read(&mut ident).map_err(|e| e.to_string())?;
    if n < 16 || &ident[..4] != b"\x7fELF" {
        return Err(format!("not an ELF shared library ({len} bytes, no ELF magic)"));
    }
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        c => return Err(format!("unknown ELF class {c}")),
    };
    let little = match ident[5] {
        1 => true,
        2 => false,
        d => return Err(format!("unknown ELF byte order {d}")),
    };
    if is64 != cfg!(target_pointer_width = "64") {
        return Err(format!("a {}-bit library; this host is {}-bit", if is64 { 64 } else { 32 }, if is64 { 32 } else { 64 }));
    }
    if little != cfg!(target_endian = "little") {
        return Err("a library of the other byte order than this host's".into());
    }
    let header_len = if is64 { 64 } else { 52 };
    if (n as u64) < header_len as u64 {
        return Err(format!("truncated: {len} bytes, shorter than the ELF header"));
    }
    let h = &ident[..header_len];
    let e_type = uint::<2>(h, 16, little);
    if e_type != 3 {
        return Err(format!("ELF type {e_type}, not a shared object (ET_DYN = 3)"));
    }
    let machine = uint::<2>(h, 18, little) as u16;
    if let Some((want, name)) = host_machine() {
        if machine != want {
            return Err(format!("built for ELF machine {machine}, this host is {name} ({want})"));
        }
    }
    let (phoff, shoff, phentsize, phnum, shentsize, shnum) = if is64 {
        (uint::<8>(h, 32, little), uint::<8>(h, 40, little), uint::<2>(h, 54, little), uint::<2>(h, 56, little), uint::<2>(h, 58, little), uint::<2>(h, 60, little))
    } else {
        (uint::<4>(h, 28, little), uint::<4>(h, 32, little), uint::<2>(h, 42, little), uint::<2>(h, 44, little), uint::<2>(h, 46, little), uint::<2>(h, 48, little))
    };
    let min_ph = if is64 { 56 } else { 32 };
    if phnum == 0 || phentsize < min_ph {
        return Err(format!("no usable program headers ({phnum} of {phentsize} bytes)"));
    }
    let ph_end = phoff.checked_add(phentsize * phnum).ok_or("program header table offset overflows")?;
    if ph_end > len {
        return Err(format!("truncated: {len} bytes, the program headers end at byte {ph_end}"));
    }
    if shoff != 0 && shnum != 0 {
        let sh_end = shoff.checked_add(shentsize * shnum).ok_or("section header table offset overflows")?;
        if sh_end > len {
            return Err(format!("truncated: {len} bytes, the section headers end at byte {sh_end}"));
        }
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).map_err(|e| e.to_string())?;
    f.read_exact(&mut table).map_err(|e| e.to_string())?;
    for i in 0..phnum as usize {
        let ph = &table[i * phentsize as usize..];
        let p_type = uint::<4>(ph, 0, little);
        let (offset, filesz) =
            if is64 { (uint::<8>(ph, 8, little), uint::<8>(ph, 32, little)) } else { (uint::<4>(ph, 4, little), uint::<4>(ph, 16, little)) };
        let end = offset.checked_add(filesz).ok_or("segment offset overflows")?;
        if filesz > 0 && end > len {
            return Err(format!(
                "truncated: {len} bytes, segment {i} (type {p_type:#x}) needs bytes {offset}..{end}; the file is incomplete (an interrupted copy?)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own path is a complete ELF for this machine, but an executable, not a shared object
    /// (unless position-independent); its truncated copies must be refused without being loaded.
    #[test]
    #[cfg(target_os = "linux")]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let write = |name: &str, b: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            p
        };
        let text = write("text.so", b"hello, not a library");
        assert!(check_shared_library(&text).unwrap_err().contains("no ELF magic"));
        let short = write("short.so", &bytes[..40]);
        assert!(check_shared_library(&short).unwrap_err().contains("truncated"));
        let cut = write("cut.so", &bytes[..4096]);
        let err = check_shared_library(&cut).unwrap_err();
        assert!(err.contains("truncated") || err.contains("not a shared object"), "{err}");
        // Other machine: flip e_machine.
        let mut other = bytes[..4096].to_vec();
        other[18] ^= 0x55;
        assert!(check_shared_library(&write("other.so", &other)).is_err());
        assert!(check_shared_library(dir.path()).unwrap_err().contains("not a regular file"));
    }
}
