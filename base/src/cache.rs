// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writing CPU cache lines back to memory, for memory that a device or a persistent medium
//! reads behind the cache.

use std::sync::OnceLock;

use remain::sorted;
use thiserror::Error;

/// Line size used when the CPU does not report one.
pub const FALLBACK_CACHE_LINE_SIZE: usize = 64;

/// Errors of the cache module.
#[sorted]
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// The cache line size is not a power of two.
    #[error("cache line size {line} is not a power of two")]
    InvalidLineSize {
        /// The size given.
        line: usize,
    },
    /// This CPU architecture has no cache flush here.
    #[error("cache flush is not implemented on {arch}")]
    NotImplemented {
        /// The target architecture.
        arch: &'static str,
    },
    /// `addr + len` overflows the address space.
    #[error("cache flush range {addr:#x}+{len:#x} overflows")]
    Overflow {
        /// Start of the range.
        addr: usize,
        /// Its length.
        len: usize,
    },
}

/// Result of the cache module.
pub type Result<T> = std::result::Result<T, Error>;

/// The instruction [`flush_range`] uses on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushInstruction {
    /// x86 `clflushopt`: weakly ordered, so lines are written back in parallel; a fence ends
    /// the walk.
    Clflushopt,
    /// x86 `clflush`: the fallback on CPUs without `clflushopt`.
    Clflush,
    /// aarch64 `dc cvac`: clean to the point of coherency.
    DcCvac,
}

/// The granularity of [`flush_range`]: the size of the line one flush instruction writes
/// back, as the CPU itself reports it (CPUID leaf 1's CLFLUSH line size on x86_64,
/// `CTR_EL0.DminLine` on aarch64; the L1 data line size that sysconf reports can differ from
/// it). [`FALLBACK_CACHE_LINE_SIZE`], logged, when the CPU reports no usable power of two.
pub fn cache_line_size() -> usize {
    static LINE: OnceLock<usize> = OnceLock::new();
    *LINE.get_or_init(|| match flush_line_size() {
        Some(line) if line.is_power_of_two() => line,
        reported => {
            log::warn!(
                "the CPU reports flush line size {reported:?}; using {FALLBACK_CACHE_LINE_SIZE}"
            );
            FALLBACK_CACHE_LINE_SIZE
        }
    })
}

/// Calls `f` with the address of every `line`-byte cache line that holds a byte of
/// `addr..addr + len`: from the line holding `addr` to the line holding `addr + len - 1`,
/// inclusive. Nothing is called for `len == 0`.
///
/// `line` must be a power of two, else [`Error::InvalidLineSize`].
///
/// ```
/// let mut lines = Vec::new();
/// base::cache::for_each_cache_line(0x1030, 0x20, 64, |l| lines.push(l)).unwrap();
/// // 0x1030..0x1050 straddles two 64-byte lines.
/// assert_eq!(lines, [0x1000, 0x1040]);
/// ```
#[inline(always)]
pub fn for_each_cache_line(
    addr: usize,
    len: usize,
    line: usize,
    mut f: impl FnMut(usize),
) -> Result<()> {
    if !line.is_power_of_two() {
        return Err(Error::InvalidLineSize { line });
    }
    if len == 0 {
        return Ok(());
    }
    let last = addr
        .checked_add(len - 1)
        .ok_or(Error::Overflow { addr, len })?;
    let mut cur = addr & !(line - 1);
    let last_line = last & !(line - 1);
    loop {
        f(cur);
        if cur == last_line {
            return Ok(());
        }
        cur += line;
    }
}

/// The flush instruction this CPU offers, or an error on architectures without one here.
pub fn flush_instruction() -> Result<FlushInstruction> {
    static INSTRUCTION: OnceLock<Result<FlushInstruction>> = OnceLock::new();
    *INSTRUCTION.get_or_init(detect_flush_instruction)
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        /// CPUID leaf 1, EBX bits 15:8: the CLFLUSH line size in 8-byte units.
        fn flush_line_size() -> Option<usize> {
            let ebx = std::arch::x86_64::__cpuid(1).ebx;
            Some(((ebx >> 8) & 0xff) as usize * 8).filter(|&line| line > 0)
        }

        fn detect_flush_instruction() -> Result<FlushInstruction> {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            const CPUID_7_EBX_CLFLUSHOPT: u32 = 1 << 23;
            // CPUID exists on every x86_64 CPU; leaf 7 only where the maximum leaf allows.
            let (max_leaf, _) = __get_cpuid_max(0);
            let clflushopt = max_leaf >= 7
                && __cpuid_count(7, 0).ebx & CPUID_7_EBX_CLFLUSHOPT != 0;
            // clflush is part of the x86_64 baseline (SSE2).
            Ok(if clflushopt {
                FlushInstruction::Clflushopt
            } else {
                FlushInstruction::Clflush
            })
        }

        /// Writes back and evicts every cache line that holds a byte of `addr..addr + len`.
        ///
        /// # Safety
        ///
        /// Every byte of `addr..addr + len` must be mapped in this process; a flush of an
        /// unmapped address faults like a load would.
        pub unsafe fn flush_range(addr: *const u8, len: usize) -> Result<()> {
            use std::arch::asm;
            use std::arch::x86_64::{_mm_clflush, _mm_sfence};
            let line = cache_line_size();
            match flush_instruction()? {
                FlushInstruction::Clflushopt => {
                    for_each_cache_line(addr as usize, len, line, |l| {
                        // SAFETY: `l` is the start of a line holding a byte of the caller's
                        // mapped range; clflushopt only writes that line back.
                        unsafe {
                            asm!("clflushopt [{0}]", in(reg) l, options(nostack, preserves_flags))
                        }
                    })?;
                }
                _ => {
                    for_each_cache_line(addr as usize, len, line, |l| {
                        // SAFETY: as above, with clflush.
                        unsafe { _mm_clflush(l as *const u8) }
                    })?;
                }
            }
            // SAFETY: sfence only orders this CPU's stores and flushes; it touches no memory.
            unsafe { _mm_sfence() };
            Ok(())
        }
    } else if #[cfg(target_arch = "aarch64")] {
        /// `CTR_EL0.DminLine` (bits 19:16): log2 of the smallest data cache line in 4-byte
        /// words, the granularity of `dc cvac`. Linux lets EL0 read CTR_EL0 (or emulates it).
        fn flush_line_size() -> Option<usize> {
            let ctr: u64;
            // SAFETY: reading CTR_EL0 has no side effects and touches no memory.
            unsafe { std::arch::asm!("mrs {0}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
            Some(4usize << ((ctr >> 16) & 0xf))
        }

        fn detect_flush_instruction() -> Result<FlushInstruction> {
            Ok(FlushInstruction::DcCvac)
        }

        /// Cleans every cache line that holds a byte of `addr..addr + len` to the point of
        /// coherency.
        ///
        /// # Safety
        ///
        /// Every byte of `addr..addr + len` must be mapped in this process.
        pub unsafe fn flush_range(addr: *const u8, len: usize) -> Result<()> {
            use std::arch::asm;
            for_each_cache_line(addr as usize, len, cache_line_size(), |l| {
                // SAFETY: `l` is the start of a line holding a byte of the caller's mapped
                // range; dc cvac only cleans that line.
                unsafe { asm!("dc cvac, {0}", in(reg) l, options(nostack, preserves_flags)) }
            })?;
            // SAFETY: a barrier that waits for the cleans above; it touches no memory.
            unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
            Ok(())
        }
    } else {
        /// No flush here, so no line size of one.
        fn flush_line_size() -> Option<usize> {
            None
        }

        fn detect_flush_instruction() -> Result<FlushInstruction> {
            Err(Error::NotImplemented { arch: std::env::consts::ARCH })
        }

        /// Always fails: this architecture has no cache flush here.
        ///
        /// # Safety
        ///
        /// None needed; the signature matches the other architectures.
        pub unsafe fn flush_range(_addr: *const u8, _len: usize) -> Result<()> {
            Err(Error::NotImplemented { arch: std::env::consts::ARCH })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(addr: usize, len: usize, line: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for_each_cache_line(addr, len, line, |l| out.push(l)).unwrap();
        out
    }

    /// The covering set computed the slow, obvious way: the line of every byte.
    fn covering_set(addr: usize, len: usize, line: usize) -> Vec<usize> {
        let mut out: Vec<usize> = (addr..addr + len).map(|b| b & !(line - 1)).collect();
        out.dedup();
        out
    }

    #[test]
    fn flushes_exactly_the_covering_lines() {
        for line in [32, 64, 128] {
            for addr in 0x1000 - 2 * line..0x1000 + 2 * line {
                for len in 0..4 * line + 3 {
                    assert_eq!(
                        lines(addr, len, line),
                        covering_set(addr, len, line),
                        "addr {addr:#x} len {len} line {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn unaligned_start_includes_the_last_line() {
        // The case crosvm gets wrong: starting mid-line, the tail line must be flushed too.
        assert_eq!(lines(0x1020, 0x40, 64), [0x1000, 0x1040]);
        assert_eq!(lines(0x103f, 2, 64), [0x1000, 0x1040]);
        assert_eq!(lines(0x1000, 0x40, 64), [0x1000]);
        assert_eq!(lines(0x1000, 1, 64), [0x1000]);
    }

    #[test]
    fn overflow_and_address_space_end() {
        assert_eq!(
            for_each_cache_line(usize::MAX - 10, 12, 64, |_| {}),
            Err(Error::Overflow {
                addr: usize::MAX - 10,
                len: 12
            })
        );
        assert!(Error::Overflow { addr: 1, len: 2 }
            .to_string()
            .contains("0x1+0x2"));
        // The very last byte is fine and must not wrap around.
        assert_eq!(lines(usize::MAX, 1, 64), [usize::MAX & !63]);
        // SAFETY: a range that overflows is refused before anything is touched.
        let r = unsafe { flush_range((usize::MAX - 10) as *const u8, 12) };
        assert!(matches!(r, Err(Error::Overflow { .. })));
    }

    #[test]
    fn bad_line_sizes_are_refused() {
        for line in [0, 3, 65, usize::MAX] {
            assert_eq!(
                for_each_cache_line(0x1000, 64, line, |_| panic!("called")),
                Err(Error::InvalidLineSize { line })
            );
        }
        assert!(Error::InvalidLineSize { line: 3 }.to_string().contains('3'));
    }

    #[test]
    fn line_size_is_the_cpus_flush_granularity() {
        assert!(cache_line_size().is_power_of_two());
        // The kernel reads the same CPUID field for /proc/cpuinfo's "clflush size": an
        // independent witness of the value we use.
        #[cfg(target_arch = "x86_64")]
        {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
            let reported: usize = cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("clflush size"))
                .and_then(|rest| {
                    rest.trim_start_matches([' ', '\t', ':'])
                        .trim()
                        .parse()
                        .ok()
                })
                .expect("/proc/cpuinfo names the clflush size");
            assert_eq!(cache_line_size(), reported);
        }
    }

    #[test]
    fn flushes_real_memory() {
        let mut buf = vec![7u8; 4096 + 3];
        // SAFETY: the range lies inside `buf`.
        unsafe { flush_range(buf.as_ptr().add(3), 4096).unwrap() };
        // SAFETY: zero length touches nothing.
        unsafe { flush_range(buf.as_ptr(), 0).unwrap() };
        buf[5] = 1;
        assert_eq!(buf[5], 1);
        #[cfg(target_arch = "x86_64")]
        {
            let (_, _, _, edx) = {
                let r = std::arch::x86_64::__cpuid(1);
                (r.eax, r.ebx, r.ecx, r.edx)
            };
            assert_ne!(edx & (1 << 19), 0, "x86_64 always has clflush");
            let has_opt = std::fs::read_to_string("/proc/cpuinfo")
                .unwrap()
                .split_whitespace()
                .any(|w| w == "clflushopt");
            let expected = if has_opt {
                FlushInstruction::Clflushopt
            } else {
                FlushInstruction::Clflush
            };
            assert_eq!(flush_instruction().unwrap(), expected);
        }
    }
}
