//! The one ELF question the image asks: is this an x86-64 executable that
//! needs no program interpreter (no `PT_INTERP`), i.e. runs in an image
//! without a libc or a dynamic loader?

use anyhow::{Result, bail, ensure};

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

/// Ok when `bytes` are a 64-bit little-endian x86-64 ELF executable (static
/// or static-pie) without a program interpreter; else an error naming what
/// is wrong, the interpreter asked for included.
pub fn check_static(name: &str, bytes: &[u8]) -> Result<()> {
    ensure!(
        bytes.len() >= 64 && bytes.starts_with(b"\x7fELF"),
        "{name} is not an ELF file"
    );
    ensure!(
        bytes[4] == 2 && bytes[5] == 1,
        "{name} is not a 64-bit little-endian ELF file"
    );
    let machine = u16_at(bytes, 18)?;
    ensure!(
        machine == EM_X86_64,
        "{name} is for ELF machine {machine}, not x86-64 (the image is linux/amd64)"
    );
    let phoff = usize::try_from(u64_at(bytes, 32)?)?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    ensure!(
        phentsize >= 56,
        "{name}: program header entries of {phentsize} bytes"
    );
    ensure!(
        phoff
            .checked_add(phnum * phentsize)
            .is_some_and(|end| end <= bytes.len()),
        "{name} is truncated: its program headers run past the end"
    );
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(bytes, ph)? == PT_INTERP {
            let offset = usize::try_from(u64_at(bytes, ph + 8)?)?;
            let size = usize::try_from(u64_at(bytes, ph + 32)?)?;
            let interp = bytes
                .get(offset..offset.saturating_add(size))
                .map(|s| String::from_utf8_lossy(s).trim_end_matches('\0').to_owned())
                .unwrap_or_default();
            bail!(
                "{name} is dynamically linked (it asks for the loader {interp:?}) and the image \
                 holds no libc; build it with `-C target-feature=+crt-static` and an explicit \
                 `--target x86_64-unknown-linux-gnu`, as `cargo xtask image` does"
            );
        }
    }
    Ok(())
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    match bytes.get(at..at.saturating_add(N)) {
        Some(b) => Ok(b.try_into()?),
        None => bail!("ELF file truncated at byte {at}"),
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(field(bytes, at)?))
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(field(bytes, at)?))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(field(bytes, at)?))
}

/// A minimal x86-64 executable for the tests: an ELF header, one `PT_LOAD`
/// (and a `PT_INTERP` naming `interp` when given) and `payload` after them.
#[cfg(test)]
pub fn fake_executable(payload: &[u8], interp: Option<&str>) -> Vec<u8> {
    let phnum: u16 = if interp.is_some() { 2 } else { 1 };
    let data_at = 64 + 56 * u64::from(phnum);
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN, as static-pie is
    elf.extend_from_slice(&EM_X86_64.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&data_at.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, phnum, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    let interp_bytes = interp.map(|i| format!("{i}\0").into_bytes());
    let mut phdr = |kind: u32, offset: u64, size: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        for v in [offset, offset, offset, size, size, 0x1000] {
            elf.extend_from_slice(&v.to_le_bytes());
        }
    };
    let payload_len = payload.len() as u64;
    if let Some(i) = &interp_bytes {
        phdr(PT_INTERP, data_at + payload_len, i.len() as u64);
    }
    phdr(1, 0, data_at + payload_len);
    elf.extend_from_slice(payload);
    if let Some(i) = interp_bytes {
        elf.extend_from_slice(&i);
    }
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_executables_pass_and_dynamic_ones_are_refused_by_name() {
        assert!(check_static("ferry-agent", &fake_executable(b"code", None)).is_ok());
        let dynamic = fake_executable(b"code", Some("/lib64/ld-linux-x86-64.so.2"));
        let err = check_static("ferry-dns", &dynamic).expect_err("a dynamic binary passed");
        let err = format!("{err:#}");
        assert!(err.contains("ferry-dns is dynamically linked"), "{err}");
        assert!(err.contains("/lib64/ld-linux-x86-64.so.2"), "{err}");
    }

    #[test]
    fn non_elf_and_truncated_files_are_refused() {
        assert!(check_static("x", b"#!/bin/sh\necho hi\n").is_err());
        let mut elf = fake_executable(b"", None);
        elf.truncate(100);
        assert!(check_static("x", &elf).is_err());
        let mut aarch64 = fake_executable(b"", None);
        aarch64[18] = 183;
        assert!(check_static("x", &aarch64).is_err());
    }

    #[test]
    fn this_test_binary_is_checked_as_the_toolchain_built_it() -> Result<()> {
        // A cross-check against a real ELF: the test binary is dynamic
        // unless the whole test build is static, and readelf agrees.
        let exe = std::env::current_exe()?;
        let bytes = std::fs::read(&exe)?;
        let ours = check_static("test", &bytes).is_ok();
        let Ok(out) = std::process::Command::new("readelf")
            .arg("-lW")
            .arg(&exe)
            .output()
        else {
            println!("SKIP: no readelf on PATH");
            return Ok(());
        };
        let theirs = !String::from_utf8_lossy(&out.stdout).contains("INTERP");
        assert_eq!(ours, theirs);
        Ok(())
    }
}
