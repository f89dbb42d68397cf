// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the real-client tests share: the guest image (Debian's kernel and a busybox
//! initramfs, from `tools/make_guest_image`), our backend as a process, and QEMU with its
//! serial console read line by line.
//!
//! When QEMU or the kernel cannot be had, a test says why and skips, unless
//! `VMM_REQUIRE_QEMU=1` (set by `tools/run_tests` when both could be had) makes that a failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn script(name: &str) -> Result<String, String> {
    let out = Command::new(tools_dir().join(name))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Held by each test while its QEMU runs: TCG guests on a 2-core machine, booted side by
/// side, starve each other's timers.
pub static ONE_GUEST_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`ONE_GUEST_AT_A_TIME`] (a test that failed while holding it poisons nothing else).
pub fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The directory with `vmlinuz` and `initramfs.gz`, or why there is none.
fn guest_image() -> Result<PathBuf, String> {
    script("fetch_qemu")?;
    Ok(PathBuf::from(script("make_guest_image")?))
}

/// The guest image, or `None` after saying why the test `test` skips.
pub fn guest_image_or_skip(test: &str) -> Option<PathBuf> {
    match guest_image() {
        Ok(dir) => Some(dir),
        Err(why) => {
            if std::env::var("VMM_REQUIRE_QEMU").as_deref() == Ok("1") {
                panic!("{test}: QEMU and Debian's kernel are required but cannot be had: {why}");
            }
            eprintln!("{test}: skipped, QEMU or Debian's kernel cannot be had: {why}");
            None
        }
    }
}

/// A fresh directory for one test's disk and socket, on the target directory's filesystem
/// (a real disk, where dirty pages can be counted, not a tmpfs).
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    name: &'static str,
}

impl Process {
    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("killing {}", self.name);
        }
        self.kill();
    }
}

/// Waits until `path` exists (a socket the child binds), for at most `timeout`.
fn wait_for_path(path: &Path, child: &mut Child, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the backend exited before binding {}: {status}",
                path.display()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "no socket at {} after {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Our backend, `vmm-memory vhost-user-blk`, serving `disk` on `socket`.
pub fn our_backend(socket: &Path, disk: &Path, extra: &[&str]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-memory"))
        .arg("vhost-user-blk")
        .arg("--socket")
        .arg(socket)
        .arg("--disk")
        .arg(disk)
        .args(extra)
        .spawn()
        .expect("cannot start vmm-memory vhost-user-blk");
    wait_for_path(socket, &mut child, Duration::from_secs(10));
    Process {
        child,
        name: "the backend",
    }
}

/// QEMU, booting the guest image's kernel on microvm with TCG, its RAM a shared memfd, and a
/// vhost-user-blk device on `socket`; the guest runs `/guest/{test}.sh`.
pub struct Qemu {
    pub process: Process,
    lines: Receiver<String>,
    /// Every line the console printed so far.
    pub seen: Vec<String>,
}

impl Qemu {
    /// Boots QEMU with one vCPU and a one-queue device.
    pub fn boot(image: &Path, socket: &Path, guest_test: &str) -> Qemu {
        Qemu::boot_with(image, socket, guest_test, 1, 1)
    }

    /// Boots QEMU with `cpus` vCPUs and a device of `queues` queues.
    pub fn boot_with(
        image: &Path,
        socket: &Path,
        guest_test: &str,
        cpus: u32,
        queues: u16,
    ) -> Qemu {
        let append =
            format!("console=ttyS0 panic=-1 quiet tsc_early_khz=2000000 vmm_test={guest_test}");
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-M", "microvm,acpi=on,memory-backend=mem"])
            .args(["-m", "256M", "-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio", "-no-reboot"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-global", "virtio-mmio.force-legacy=false"])
            .arg("-chardev")
            .arg(format!("socket,id=blk0,path={}", socket.display()))
            .arg("-smp")
            .arg(cpus.to_string())
            .arg("-device")
            .arg(format!("vhost-user-blk,chardev=blk0,num-queues={queues}"))
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.join("initramfs.gz"))
            .args(["-append", &append])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Qemu {
            process: Process {
                child,
                name: "QEMU",
            },
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads console lines until one starts with `marker` and returns it; panics, with what
    /// the console said, on a guest failure, QEMU's exit, or `timeout`.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim_end_matches('\r').to_owned();
                    self.seen.push(line.clone());
                    if line.starts_with("GUEST-FAIL") {
                        panic!("the guest failed: {line}\n{}", self.seen.join("\n"));
                    }
                    if line.starts_with(marker) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {marker:?} within {timeout:?}; the console said:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "QEMU ended before {marker:?}; the console said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Lines already printed, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        let mut new = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            let line = line.trim_end_matches('\r').to_owned();
            self.seen.push(line.clone());
            new.push(line);
        }
        new
    }

    /// Waits for QEMU to exit (the guest powers off), for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.child.try_wait().unwrap() {
                assert!(status.success(), "QEMU exited with {status}");
                return;
            }
            self.drain();
            assert!(
                Instant::now() < deadline,
                "QEMU still runs after {timeout:?}; the console said:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The 4 KiB the guest scripts write at a block: their line repeated (`yes LINE | head -c`).
pub fn pattern(line: &str) -> Vec<u8> {
    let unit = format!("{line}\n");
    unit.as_bytes().iter().copied().cycle().take(4096).collect()
}
