// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MemoryMappingArena against the rules table of DESIGN section 2, against what the kernel
//! reports in /proc/self/maps, and against what Linux answers for the same operations on a
//! plain mapping.

use std::os::unix::fs::FileExt;

use base::mmap::Error;
use base::{
    ArenaMapping, Backing, MappedRegion, MemoryMappingArena, MemoryMappingBuilder, Protection,
    SharedMemory, VolatileMemory, VolatileMemoryError,
};

mod common;

const P: usize = 4096;

/// What the books say each page's kernel permissions must be.
fn expected_perms(arena: &MemoryMappingArena) -> Vec<String> {
    let books: Vec<ArenaMapping> = arena.mappings().collect();
    (0..arena.size())
        .step_by(P)
        .map(|off| {
            match books
                .iter()
                .find(|m| m.offset <= off && off < m.offset + m.size)
            {
                Some(m) => format!(
                    "{}{}-s",
                    if m.protection.is_read() { 'r' } else { '-' },
                    if m.protection.is_write() { 'w' } else { '-' }
                ),
                None => "---p".to_owned(),
            }
        })
        .collect()
}

/// The books and the kernel agree on every page of the arena.
fn assert_books_match_kernel(arena: &MemoryMappingArena) {
    let kernel = common::page_perms(arena.as_ptr() as usize, arena.size());
    assert_eq!(kernel, expected_perms(arena), "books {:?}", spans(arena));
}

fn spans(arena: &MemoryMappingArena) -> Vec<(usize, usize)> {
    arena
        .mappings()
        .map(|m| (m.offset / P, m.size / P))
        .collect()
}

#[test]
fn new_reserves_without_access_and_refuses_bad_sizes() {
    let arena = MemoryMappingArena::new(10 * P + 1).unwrap();
    assert_eq!(arena.size(), 11 * P);
    assert!(arena.mappings().next().is_none());
    assert_books_match_kernel(&arena);
    let err = MemoryMappingArena::new(0).unwrap_err();
    assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
    let err = MemoryMappingArena::new(usize::MAX).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    let err = MemoryMappingArena::new(1 << 62).unwrap_err();
    assert!(
        matches!(err, Error::Reserve { what: "an arena", size, .. } if size == 1 << 62),
        "{err}"
    );
}

#[test]
fn add_follows_the_rules_table() {
    let mut arena = MemoryMappingArena::new(16 * P).unwrap();
    arena.add_anon(4 * P, 4 * P).unwrap();
    let before = spans(&arena);
    let overlap = |offset: usize, size: usize| {
        move |e: &Error| {
            matches!(e, Error::MappingOverlap { offset: o, size: s, existing_offset, existing_size }
                if *o == offset && *s == size && *existing_offset == 4 * P && *existing_size == 4 * P)
        }
    };
    type Check = Box<dyn Fn(&Error) -> bool>;
    let cases: Vec<(usize, usize, Check)> = vec![
        (
            4 * P + 1,
            P,
            Box::new(|e| matches!(e, Error::NotPageAligned { .. })),
        ),
        (0, 0, Box::new(|e| matches!(e, Error::InvalidSize { .. }))),
        (
            15 * P,
            2 * P,
            Box::new(|e| matches!(e, Error::InvalidAddress { .. })),
        ),
        (
            16 * P,
            1,
            Box::new(|e| matches!(e, Error::InvalidAddress { .. })),
        ),
        (
            usize::MAX & !(P - 1),
            P,
            Box::new(|e| matches!(e, Error::Overflow { .. })),
        ),
        (
            0,
            usize::MAX,
            Box::new(|e| matches!(e, Error::Overflow { .. })),
        ),
        (4 * P, 4 * P, Box::new(overlap(4 * P, 4 * P))),
        (3 * P, 2 * P, Box::new(overlap(3 * P, 2 * P))),
        (7 * P, 2 * P, Box::new(overlap(7 * P, 2 * P))),
        (5 * P, P, Box::new(overlap(5 * P, P))),
        (2 * P, 8 * P, Box::new(overlap(2 * P, 8 * P))),
        // A size that rounds up into the existing mapping overlaps too.
        (3 * P, P + 1, Box::new(overlap(3 * P, P + 1))),
    ];
    for (offset, size, check) in cases {
        let err = arena.add_anon(offset, size).unwrap_err();
        assert!(check(&err), "add {offset:#x}+{size:#x}: {err}");
        if size != 0 {
            assert!(err.to_string().contains(&format!("{offset:#x}")), "{err}");
        }
        assert_eq!(spans(&arena), before, "a refused add changed the books");
        assert_books_match_kernel(&arena);
    }
    // Adjacent on both sides is fine, and sizes round up to a page.
    arena.add_anon(8 * P, P).unwrap();
    arena.add_anon(3 * P, 1).unwrap();
    assert_eq!(spans(&arena), [(3, 1), (4, 4), (8, 1)]);
    assert_books_match_kernel(&arena);
}

#[test]
fn remove_splits_ignores_holes_and_keeps_the_reservation() {
    let shm = SharedMemory::new("arena-remove", 8 * P as u64).unwrap();
    let mut arena = MemoryMappingArena::new(16 * P).unwrap();
    arena
        .add_fd_offset(2 * P, 6 * P, &shm, 2 * P as u64)
        .unwrap();
    arena.add_anon(10 * P, 2 * P).unwrap();
    // Punch a hole in the middle of the file mapping: it splits, file offsets follow.
    arena.remove(4 * P, P).unwrap();
    let got: Vec<_> = arena.mappings().collect();
    assert_eq!(spans(&arena), [(2, 2), (5, 3), (10, 2)]);
    assert_eq!(
        got[1].backing,
        Backing::Descriptor {
            offset: 5 * P as u64
        }
    );
    assert_books_match_kernel(&arena);
    // A range over two mappings and the holes around them, partially.
    arena.remove(7 * P, 4 * P).unwrap();
    assert_eq!(spans(&arena), [(2, 2), (5, 2), (11, 1)]);
    assert_books_match_kernel(&arena);
    // Only unmapped space: nothing to do, not an error (as munmap).
    arena.remove(13 * P, 3 * P).unwrap();
    assert_eq!(spans(&arena), [(2, 2), (5, 2), (11, 1)]);
    // Refusals.
    let err = arena.remove(P + 8, P).unwrap_err();
    assert!(matches!(err, Error::NotPageAligned { value, .. } if value == (P + 8) as u64));
    let err = arena.remove(0, 0).unwrap_err();
    assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
    let err = arena.remove(15 * P, 2 * P).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    let err = arena.remove(P, usize::MAX - P).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    // Removed space can be mapped again.
    arena.add_anon(4 * P, P).unwrap();
    arena.add_anon(7 * P, 4 * P).unwrap();
    assert_eq!(spans(&arena), [(2, 2), (4, 1), (5, 2), (7, 4), (11, 1)]);
    assert_books_match_kernel(&arena);
}

#[test]
fn protect_splits_at_the_edges_like_mprotect() {
    let mut arena = MemoryMappingArena::new(16 * P).unwrap();
    arena.add_anon(0, 6 * P).unwrap();
    arena.add_anon(8 * P, 4 * P).unwrap();
    arena.protect(2 * P, 8 * P, Protection::read()).unwrap();
    let got: Vec<_> = arena
        .mappings()
        .map(|m| (m.offset / P, m.size / P, m.protection))
        .collect();
    let (rw, r) = (Protection::read_write(), Protection::read());
    assert_eq!(got, [(0, 2, rw), (2, 4, r), (8, 2, r), (10, 2, rw)]);
    assert_books_match_kernel(&arena);
    // The reservation in between stays inaccessible.
    assert_eq!(
        common::page_perms(arena.as_ptr() as usize + 6 * P, 2 * P),
        ["---p", "---p"]
    );
    arena.protect(0, 0, Protection::none()).unwrap();
    let err = arena
        .protect(13 * P, 2 * P, Protection::read())
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidAddress { why, .. } if why.contains("no mapping")),
        "{err}"
    );
    let err = arena.protect(P + 1, P, Protection::read()).unwrap_err();
    assert!(matches!(err, Error::NotPageAligned { .. }), "{err}");
    let err = arena
        .protect(15 * P, 2 * P, Protection::read())
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    let err = arena
        .protect(P, usize::MAX, Protection::read())
        .unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }), "{err}");
    arena.protect(0, 16 * P, Protection::none()).unwrap();
    assert_books_match_kernel(&arena);
}

#[test]
fn a_refused_protect_restores_what_it_changed() {
    let ro = common::read_only_file(2 * P as u64);
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena
        .add_anon_protection(0, 2 * P, Protection::read())
        .unwrap();
    arena
        .add_fd_offset_protection(2 * P, 2 * P, &ro, 0, Protection::read())
        .unwrap();
    // The anonymous part could become writable; the read-only file cannot.
    let err = arena
        .protect(0, 4 * P, Protection::read_write())
        .unwrap_err();
    assert!(
        matches!(&err, Error::SystemCall { call: "mprotect", offset, source, .. }
            if *offset == 2 * P && source.raw_os_error() == Some(libc::EACCES)),
        "{err}"
    );
    assert!(arena.mappings().all(|m| m.protection == Protection::read()));
    assert_books_match_kernel(&arena);
}

#[test]
fn msync_and_madvise_touch_only_mapped_parts() {
    let file = common::temp_file(4 * P as u64);
    let mut arena = MemoryMappingArena::new(16 * P).unwrap();
    arena.add_fd(4 * P, 4 * P, &file).unwrap();
    arena.add_anon(10 * P, 2 * P).unwrap();
    arena.get_slice(5 * P, 4).unwrap().copy_from(b"sync");
    arena.get_slice(10 * P, 2 * P).unwrap().write_bytes(0x77);
    let region: &dyn MappedRegion = &arena;
    // Partly over the reservation: fine, the mapped part is synced.
    region.msync(2 * P, 4 * P).unwrap();
    let mut back = [0u8; 4];
    file.read_exact_at(&mut back, P as u64).unwrap();
    assert_eq!(&back, b"sync");
    region.msync(0, 0).unwrap();
    let err = region.msync(0, 4 * P).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    let err = region.msync(3, P).unwrap_err();
    assert!(matches!(err, Error::NotPageAligned { .. }), "{err}");
    let err = region.msync(12 * P, 5 * P).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    let err = region
        .madvise(13 * P, 3 * P, libc::MADV_REMOVE)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    // MADV_REMOVE over the anonymous mapping and the reservation around it: only the
    // mapping is advised (Linux itself refuses MADV_REMOVE on the private reservation).
    region.madvise(9 * P, 4 * P, libc::MADV_REMOVE).unwrap();
    assert!(arena.get_slice(10 * P, 2 * P).unwrap().is_all_zero());
    // SAFETY: the range is inside the arena's reservation; MADV_REMOVE on a private mapping
    // is refused by the kernel without touching anything.
    let raw = unsafe {
        libc::madvise(
            arena.as_ptr().add(13 * P) as *mut libc::c_void,
            P,
            libc::MADV_REMOVE,
        )
    };
    assert_eq!(raw, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EINVAL)
    );
}

/// The same operations on a plain mapping made with raw syscalls, and on an arena: Linux's
/// answer and ours must agree (success, or the typed counterpart of the errno).
#[test]
fn answers_agree_with_linux_on_a_plain_mapping() {
    let len = 8 * P;
    // SAFETY: a fresh anonymous shared mapping, unmapped at the end of the test.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u8;
    assert_ne!(raw as *mut libc::c_void, libc::MAP_FAILED);
    let errno = |ret: libc::c_int| {
        if ret == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap()
        }
    };
    let mut arena = MemoryMappingArena::new(len).unwrap();
    arena.add_anon(0, len).unwrap();
    let region: &dyn MappedRegion = &arena;
    let kind = |r: Result<(), Error>| match r {
        Ok(()) => 0,
        Err(Error::NotPageAligned { .. }) => libc::EINVAL,
        Err(Error::MappingOverlap { .. }) => libc::EEXIST,
        Err(e) => panic!("unexpected {e}"),
    };
    // SAFETY: every raw call below acts on `raw..raw + len`, our own mapping.
    unsafe {
        // msync: unaligned start, zero length, a whole page.
        let linux = errno(libc::msync(raw.add(1) as _, P, libc::MS_SYNC));
        assert_eq!(linux, kind(region.msync(1, P)));
        let linux = errno(libc::msync(raw as _, 0, libc::MS_SYNC));
        assert_eq!(linux, kind(region.msync(0, 0)));
        let linux = errno(libc::msync(raw.add(P) as _, 10, libc::MS_SYNC));
        assert_eq!(linux, kind(region.msync(P, 10)));
        // madvise: unaligned start, and a valid advice on part.
        let linux = errno(libc::madvise(raw.add(7) as _, P, libc::MADV_DONTNEED));
        assert_eq!(linux, kind(region.madvise(7, P, libc::MADV_DONTNEED)));
        let linux = errno(libc::madvise(raw.add(2 * P) as _, P, libc::MADV_REMOVE));
        assert_eq!(linux, kind(region.madvise(2 * P, P, libc::MADV_REMOVE)));
        // An overlapping map that must not replace: MAP_FIXED_NOREPLACE says EEXIST.
        let ret = libc::mmap(
            raw.add(P) as _,
            2 * P,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        assert_eq!(ret, libc::MAP_FAILED);
        let linux = std::io::Error::last_os_error().raw_os_error().unwrap();
        assert_eq!(linux, kind(arena.add_anon(P, 2 * P)));
        // mprotect of the middle splits one vma into three; the books split the same way.
        let linux = errno(libc::mprotect(raw.add(2 * P) as _, 2 * P, libc::PROT_READ));
        assert_eq!(linux, kind(arena.protect(2 * P, 2 * P, Protection::read())));
        let raw_vmas = common::vmas()
            .iter()
            .filter(|v| v.start >= raw as usize && v.end <= raw as usize + len)
            .count();
        assert_eq!(raw_vmas, 3);
        assert_eq!(arena.mappings().count(), 3);
        // munmap of the middle splits too, and a second munmap of the same hole succeeds.
        let linux = errno(libc::munmap(raw.add(3 * P) as _, 2 * P));
        assert_eq!(linux, kind(arena.remove(3 * P, 2 * P)));
        let linux = errno(libc::munmap(raw.add(3 * P) as _, 2 * P));
        assert_eq!(linux, kind(arena.remove(3 * P, 2 * P)));
        assert_eq!(arena.mappings().count(), 3);
        libc::munmap(raw as _, len);
    }
    assert_books_match_kernel(&arena);
}

#[test]
fn range_plumbing_uses_checked_arithmetic() {
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena.add_anon(0, P).unwrap();
    let region: &dyn MappedRegion = &arena;
    for (offset, len) in [(usize::MAX, 2), (usize::MAX - 0x10, 0x20), (P, usize::MAX)] {
        let err = region
            .for_each_mapped_range(offset, len, &mut |_, _, _| panic!("called"))
            .unwrap_err();
        assert!(
            matches!(err, Error::Overflow { .. }),
            "{offset:#x}+{len:#x}: {err}"
        );
        let err = region.msync(offset & !(P - 1), len).unwrap_err();
        assert!(
            matches!(err, Error::Overflow { .. } | Error::InvalidAddress { .. }),
            "{err}"
        );
    }
    let err = region
        .for_each_mapped_range(4 * P, 5 * P, &mut |_, _, _| panic!("called"))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidAddress { offset, size, .. } if offset == 4 * P && size == 5 * P),
        "{err}"
    );
    let mut seen = Vec::new();
    region
        .for_each_mapped_range(0, 8 * P, &mut |o, l, prot| {
            seen.push((o, l, prot));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, [(0, P, Protection::read_write())]);
}

#[test]
fn mapped_ranges_carry_each_sub_mappings_protection() {
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena.add_anon(0, 2 * P).unwrap();
    arena
        .add_anon_protection(3 * P, P, Protection::read())
        .unwrap();
    arena.add_anon(5 * P, P).unwrap();
    // Part of the first, a hole, the read-only one, a hole, the last.
    let mut seen = Vec::new();
    (&arena as &dyn MappedRegion)
        .for_each_mapped_range(P, 6 * P, &mut |o, l, prot| {
            seen.push((o, l, prot));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen,
        [
            (P, P, Protection::read_write()),
            (3 * P, P, Protection::read()),
            (5 * P, P, Protection::read_write()),
        ]
    );
    // A protect splits the books, and the report follows it.
    arena.protect(0, P, Protection::read()).unwrap();
    let mut seen = Vec::new();
    (&arena as &dyn MappedRegion)
        .for_each_mapped_range(0, 2 * P, &mut |o, l, prot| {
            seen.push((o, l, prot));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen,
        [(0, P, Protection::read()), (P, P, Protection::read_write())]
    );
}

#[test]
fn failed_adds_leave_books_and_reservation_intact() {
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena.add_anon(0, P).unwrap();
    let short = common::temp_file(P as u64);
    let err = arena.add_fd(2 * P, 2 * P, &short).unwrap_err();
    assert!(
        matches!(err, Error::FileTooShort { file_size, end, .. } if file_size == P as u64 && end == 2 * P as u64),
        "{err}"
    );
    // 16 KiB of a one-page memfd would SIGBUS on its second page: refused too, though the
    // memfd could grow.
    let shm = base::SharedMemory::new("one page", P as u64).unwrap();
    let err = arena.add_fd(2 * P, 4 * P, &shm).unwrap_err();
    assert!(
        matches!(err, Error::FileTooShort { file_size, end, .. } if file_size == P as u64 && end == 4 * P as u64),
        "{err}"
    );
    let err = arena.add_fd_offset(2 * P, P, &short, 3).unwrap_err();
    assert!(
        matches!(err, Error::NotPageAligned { value: 3, .. }),
        "{err}"
    );
    let err = arena
        .add_fd_offset(2 * P, P, &short, u64::MAX - 10)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOffset { .. }), "{err}");
    // Refused by mmap itself after the range was handed over: the reservation is restored.
    let ro = common::read_only_file(P as u64);
    let err = arena.add_fd(2 * P, P, &ro).unwrap_err();
    assert!(matches!(err, Error::Mmap { .. }), "{err}");
    let (pipe, _w) = std::io::pipe().unwrap();
    let err = arena.add_fd(2 * P, P, &pipe).unwrap_err();
    assert!(matches!(err, Error::Mmap { .. }), "{err}");
    assert_eq!(spans(&arena), [(0, 1)]);
    assert_books_match_kernel(&arena);
}

#[test]
fn queries_report_protection_backing_and_file_offset() {
    let shm = SharedMemory::new("query", 16 * P as u64).unwrap();
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena.add_anon_protection(0, P, Protection::read()).unwrap();
    arena
        .add_fd_offset_protection(2 * P, 2 * P, &shm, 8 * P as u64, Protection::read_write())
        .unwrap();
    let got: Vec<_> = arena.mappings().collect();
    assert_eq!(
        got,
        [
            ArenaMapping {
                offset: 0,
                size: P,
                protection: Protection::read(),
                backing: Backing::Anonymous
            },
            ArenaMapping {
                offset: 2 * P,
                size: 2 * P,
                protection: Protection::read_write(),
                backing: Backing::Descriptor {
                    offset: 8 * P as u64
                }
            },
        ]
    );
    // The kernel agrees on the file offset.
    let start = arena.as_ptr() as usize + 2 * P;
    let vma = common::vmas()
        .into_iter()
        .find(|v| v.start == start)
        .unwrap();
    assert_eq!(vma.offset, 8 * P as u64);
}

#[test]
fn volatile_slices_need_read_write_mappings_without_gaps() {
    let mut arena = MemoryMappingArena::new(8 * P).unwrap();
    arena.add_anon(0, 2 * P).unwrap();
    arena.add_anon(2 * P, P).unwrap();
    arena
        .add_anon_protection(4 * P, P, Protection::read())
        .unwrap();
    // Across two adjacent mappings: fine.
    let s = arena.get_slice(P, 2 * P).unwrap();
    s.write_bytes(1);
    assert_eq!(
        arena
            .get_slice(2 * P, 1)
            .unwrap()
            .read_obj::<u8>(0)
            .unwrap(),
        1
    );
    for (offset, count) in [(2 * P, 2 * P), (3 * P, 1), (4 * P, 8)] {
        assert_eq!(
            arena.get_slice(offset, count).unwrap_err(),
            VolatileMemoryError::NotMapped { offset, count }
        );
    }
    assert_eq!(arena.get_slice(6 * P, 0).unwrap().size(), 0);
    assert!(matches!(
        arena.get_slice(8 * P, 1),
        Err(VolatileMemoryError::OutOfBounds { .. })
    ));
    assert!(matches!(
        arena.get_slice(usize::MAX, 2),
        Err(VolatileMemoryError::Overflow { .. })
    ));
}

#[test]
fn a_mapping_becomes_an_arena() {
    let file = common::temp_file(4 * P as u64);
    let mapping = MemoryMappingBuilder::new(4 * P)
        .from_file(&file)
        .protection(Protection::read_write())
        .build()
        .unwrap();
    mapping.write_obj(0x5555u16, 2 * P).unwrap();
    let mut arena = MemoryMappingArena::from(mapping);
    assert_eq!(arena.size(), 4 * P);
    let only: Vec<_> = arena.mappings().collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].backing, Backing::Descriptor { offset: 0 });
    arena.remove(P, P).unwrap();
    arena.add_anon(P, P).unwrap();
    assert_eq!(
        arena
            .get_slice(2 * P, 2)
            .unwrap()
            .read_obj::<u16>(0)
            .unwrap(),
        0x5555
    );
    assert_books_match_kernel(&arena);
}

#[test]
fn mapped_region_calls_reach_the_arena() {
    let shm = SharedMemory::new("dyn", 2 * P as u64).unwrap();
    let mut arena = MemoryMappingArena::new(4 * P).unwrap();
    let region: &mut dyn MappedRegion = &mut arena;
    region
        .add_fd_mapping(P, 2 * P, &shm, 0, Protection::read())
        .unwrap();
    let err = region
        .add_fd_mapping(2 * P, P, &shm, 0, Protection::read())
        .unwrap_err();
    assert!(matches!(err, Error::MappingOverlap { .. }), "{err}");
    region.remove_mapping(P, P).unwrap();
    assert_eq!(spans(&arena), [(2, 1)]);
    assert_books_match_kernel(&arena);
}
