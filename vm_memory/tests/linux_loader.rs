// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! rust-vmm's `linux-loader`, unmodified, loads Debian's own cloud kernel into our
//! `GuestMemory` through the `rust-vmm` adapter. The kernel package comes from
//! `tools/fetch_debian_kernel` (cached); when it cannot be had the tests say why and skip,
//! unless `VMM_REQUIRE_DEBIAN_KERNEL=1` (set by `tools/run_tests` when the fetch worked), which
//! turns the skip into a failure.

#![cfg(all(feature = "rust-vmm", target_arch = "x86_64"))]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::BootConfigurator as _;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::{BzImage, Error as BzError};
use linux_loader::loader::{load_cmdline, Error as LoaderError, KernelLoader};
use vm_memory::rust_vm_memory::{self as rvm, ByteValued};
use vm_memory::{GuestAddress, GuestMemory};

const MIB: u64 = 1 << 20;
/// Where the bzImage's setup header starts (Linux boot protocol).
const SETUP_HEADER: usize = 0x1f1;
/// `code32_start` in the file, which the loader rewrites to the load address.
const CODE32_START: usize = 0x214;

/// Debian's vmlinuz, or why there is none.
fn debian_kernel() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/fetch_debian_kernel");
    if !script.exists() {
        return Err(format!(
            "{} is not here (a vendored crate?)",
            script.display()
        ));
    }
    let out = Command::new(&script)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let boot =
        std::fs::read_dir(dir.join("boot")).map_err(|e| format!("{}: {e}", dir.display()))?;
    boot.filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("no vmlinuz in {}", dir.display()))
}

/// The kernel, or `None` after saying why the test skips (a panic if it must not skip).
fn kernel_or_skip(test: &str) -> Option<(PathBuf, Vec<u8>)> {
    match debian_kernel() {
        Ok(path) => {
            let bytes = std::fs::read(&path).unwrap();
            Some((path, bytes))
        }
        Err(why) => {
            if std::env::var("VMM_REQUIRE_DEBIAN_KERNEL").as_deref() == Ok("1") {
                panic!("{test}: Debian's kernel is required but cannot be had: {why}");
            }
            eprintln!("{test}: skipped, Debian's kernel cannot be had: {why}");
            None
        }
    }
}

/// 64 MiB of RAM as three contiguous regions, so the kernel crosses region boundaries.
fn memory() -> GuestMemory {
    GuestMemory::new(&[
        (GuestAddress(0), MIB),
        (GuestAddress(MIB), 3 * MIB),
        (GuestAddress(4 * MIB), 60 * MIB),
    ])
    .unwrap()
}

#[test]
fn linux_loader_loads_debians_kernel_byte_for_byte() {
    let Some((path, image)) = kernel_or_skip("linux_loader_loads_debians_kernel_byte_for_byte")
    else {
        return;
    };
    let mem = memory();
    let result = BzImage::load(
        &mem,
        None,
        &mut File::open(&path).unwrap(),
        Some(rvm::GuestAddress(MIB)),
    )
    .unwrap();

    // The header linux-loader returns is the file's, but for code32_start, which it sets to
    // where it loaded the kernel.
    let header = result.setup_header.expect("a bzImage has a setup header");
    let size = std::mem::size_of::<setup_header>();
    let mut expected = image[SETUP_HEADER..SETUP_HEADER + size].to_vec();
    let at = CODE32_START - SETUP_HEADER;
    expected[at..at + 4].copy_from_slice(&(result.kernel_load.0 as u32).to_le_bytes());
    assert_eq!(header.as_slice(), &expected[..]);
    // And the fields read from the file independently of linux-loader.
    let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
    assert_eq!(&image[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(0x1fe), 0xaa55);
    assert_eq!({ header.version }, u16_at(0x206));
    assert_eq!(u32_at(CODE32_START), 0x10_0000, "the default load address");
    assert_eq!(result.kernel_load, rvm::GuestAddress(0x10_0000));

    // The protected-mode payload is the file after the setup sectors, and it is in guest
    // memory, byte for byte, at the load address, through our own accessors.
    let setup_sects = match image[SETUP_HEADER] {
        0 => 4,
        n => usize::from(n),
    };
    let payload = &image[(setup_sects + 1) * 512..];
    assert_eq!(
        result.kernel_end - result.kernel_load.0,
        payload.len() as u64
    );
    let mut loaded = vec![0u8; payload.len()];
    mem.read_exact_at_addr(&mut loaded, GuestAddress(result.kernel_load.0))
        .unwrap();
    assert!(loaded == payload, "the loaded kernel differs from the file");
    assert!(
        result.kernel_end > 4 * MIB,
        "the kernel ({:#x}..{:#x}) should cross from the second region into the third",
        result.kernel_load.0,
        result.kernel_end
    );
    // Nothing before the load address was touched.
    let mut before = vec![0xffu8; 0x1000];
    mem.read_exact_at_addr(&mut before, GuestAddress(0x10_0000 - 0x1000))
        .unwrap();
    assert!(before.iter().all(|&b| b == 0));

    // The zero page, as a VMM would write it with linux-loader's boot configurator.
    let params = linux_loader::loader::bootparam::boot_params {
        hdr: header,
        ..Default::default()
    };
    linux_loader::configurator::linux::LinuxBootConfigurator::write_bootparams(
        &linux_loader::configurator::BootParams::new(&params, rvm::GuestAddress(0x7000)),
        &mem,
    )
    .unwrap();
    let mut magic = [0u8; 4];
    mem.read_exact_at_addr(&mut magic, GuestAddress(0x7000 + 0x202))
        .unwrap();
    assert_eq!(&magic, b"HdrS");
}

#[test]
fn linux_loader_refuses_memory_too_small_for_the_kernel() {
    let Some((path, _)) = kernel_or_skip("linux_loader_refuses_memory_too_small_for_the_kernel")
    else {
        return;
    };
    // 4 MiB of RAM, then a hole: the kernel does not fit.
    let mem = GuestMemory::new(&[(GuestAddress(0), 4 * MIB)]).unwrap();
    let err = BzImage::load(&mem, None, &mut File::open(&path).unwrap(), None).unwrap_err();
    assert!(
        matches!(
            err,
            LoaderError::Bzimage(BzError::ReadBzImageCompressedKernel)
        ),
        "{err:?}"
    );
    // A load address in a hole.
    let mem = memory();
    let err = BzImage::load(
        &mem,
        Some(rvm::GuestAddress(64 * MIB)),
        &mut File::open(&path).unwrap(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            LoaderError::Bzimage(BzError::ReadBzImageCompressedKernel)
        ),
        "{err:?}"
    );
    // A high-memory start above the kernel's own address.
    let err = BzImage::load(
        &mem,
        None,
        &mut File::open(&path).unwrap(),
        Some(rvm::GuestAddress(2 * MIB)),
    )
    .unwrap_err();
    assert!(
        matches!(err, LoaderError::InvalidKernelStartAddress),
        "{err:?}"
    );
}

#[test]
fn load_cmdline_writes_the_command_line() {
    // No kernel needed.
    let mem = memory();
    let mut cmdline = Cmdline::new(256).unwrap();
    cmdline
        .insert_str("console=ttyS0 reboot=k panic=1")
        .unwrap();
    cmdline.insert("root", "/dev/vda").unwrap();
    load_cmdline(&mem, rvm::GuestAddress(0x2_0000), &cmdline).unwrap();
    let expected = b"console=ttyS0 reboot=k panic=1 root=/dev/vda\0";
    let mut back = vec![0u8; expected.len()];
    mem.read_exact_at_addr(&mut back, GuestAddress(0x2_0000))
        .unwrap();
    assert_eq!(&back[..], &expected[..]);
    // Crossing into the next region is fine; past the end of memory it is refused.
    load_cmdline(&mem, rvm::GuestAddress(MIB - 8), &cmdline).unwrap();
    let err = load_cmdline(&mem, rvm::GuestAddress(64 * MIB - 8), &cmdline).unwrap_err();
    assert!(matches!(err, LoaderError::CommandLineOverflow), "{err:?}");
    // In a hole below the end of memory (our write reports the hole).
    let holed = GuestMemory::new(&[(GuestAddress(0), MIB), (GuestAddress(2 * MIB), MIB)]).unwrap();
    let err = load_cmdline(&holed, rvm::GuestAddress(MIB + 16), &cmdline).unwrap_err();
    assert!(matches!(err, LoaderError::CommandLineCopy), "{err:?}");
}
