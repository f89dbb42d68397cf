// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Tube`]: one end of a connected `SOCK_SEQPACKET` pair that carries serde messages, with
//! file descriptors attached (`SCM_RIGHTS`).
//!
//! Each message is one packet: a header byte, then the message in `postcard`'s compact
//! format. Packets are bounded ([`MAX_MESSAGE_SIZE`] bytes, [`MAX_DESCRIPTORS`] descriptors);
//! a packet over either bound is refused whole, and every descriptor that came with a refused
//! packet is closed, so a hostile peer can neither make us allocate without bound nor leak
//! descriptors into us.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::time::Duration;

use remain::sorted;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::descriptor::{
    AsRawDescriptor, FromRawDescriptor, IntoRawDescriptor, RawDescriptor, SafeDescriptor,
};

/// Largest message body in bytes (after the header byte).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Most descriptors one message may carry.
pub const MAX_DESCRIPTORS: usize = 32;
/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`). Receiving with room for
/// that many means the control data can never be truncated, so every descriptor a peer sends
/// becomes ours to close, however many it sends.
const SCM_MAX_FD: usize = 253;
/// First byte of every packet. A zero-length message would look like end-of-stream on a
/// `SOCK_SEQPACKET` socket, so every packet carries at least this byte.
const HEADER: u8 = 0x7b;

/// Errors of the tube module.
#[sorted]
#[derive(Debug, Error)]
pub enum Error {
    /// The packet does not start with the tube header byte.
    #[error("packet of {len} bytes does not start with the tube header")]
    BadHeader {
        /// The packet's length.
        len: usize,
    },
    /// The message bytes do not decode as the expected type.
    #[error("cannot decode a message of {len} bytes: {source}")]
    Deserialize {
        /// The message's length.
        len: usize,
        /// What postcard answered.
        source: postcard::Error,
    },
    /// The other end is closed.
    #[error("the other end of the tube is closed")]
    Disconnected,
    /// The descriptor is not a `SOCK_SEQPACKET` socket.
    #[error("descriptor {fd} is not a SOCK_SEQPACKET socket")]
    NotSeqpacket {
        /// The descriptor.
        fd: RawDescriptor,
    },
    /// A message larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The message's length (at least; a received one is cut at `max + 1`).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Receiving failed.
    #[error("failed to receive on the tube: {0}")]
    Recv(#[source] std::io::Error),
    /// Sending failed.
    #[error("failed to send on the tube: {0}")]
    Send(#[source] std::io::Error),
    /// The message cannot be encoded.
    #[error("cannot encode the message: {0}")]
    Serialize(#[source] postcard::Error),
    /// Setting a timeout failed.
    #[error("failed to set the tube's {which} timeout: {source}")]
    SetTimeout {
        /// `receive` or `send`.
        which: &'static str,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// Creating or inspecting the socket failed.
    #[error("tube socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The timeout passed before a message could be sent or received.
    #[error("the tube timed out")]
    Timeout,
    /// A message carried more than [`MAX_DESCRIPTORS`] descriptors; all were closed.
    #[error("message carries {count} descriptors; the limit is {max}")]
    TooManyDescriptors {
        /// How many (at least) it carried.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The message decoded but bytes were left over.
    #[error("message of {len} bytes decoded with {left} bytes left over")]
    TrailingBytes {
        /// The message's length.
        len: usize,
        /// The bytes left.
        left: usize,
    },
    /// A message the receiver expected without descriptors carried some; they were closed.
    #[error("message unexpectedly carries {count} descriptors")]
    UnexpectedDescriptors {
        /// How many it carried.
        count: usize,
    },
}

/// Result of the tube module.
pub type Result<T> = std::result::Result<T, Error>;

/// One end of a bidirectional, message-oriented channel.
///
/// ```
/// use base::Tube;
/// let (a, b) = Tube::pair().unwrap();
/// a.send(&("register", 0x1000u64)).unwrap();
/// let got: (String, u64) = b.recv().unwrap();
/// assert_eq!(got, ("register".to_owned(), 0x1000));
/// ```
#[derive(Debug)]
pub struct Tube {
    socket: SafeDescriptor,
}

/// The socket as vmm-sys-util's `ScmSocket`, for its SCM_RIGHTS send and receive.
struct Socket(RawFd);

impl ScmSocket for Socket {
    fn socket_fd(&self) -> RawFd {
        self.0
    }
}

impl Tube {
    /// A connected pair of tubes.
    pub fn pair() -> Result<(Tube, Tube)> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which has room for them; the
        // return value is checked before they are trusted.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if ret < 0 {
            return Err(Error::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created by socketpair and are owned by nobody.
        let (a, b) = unsafe {
            (
                SafeDescriptor::from_raw_descriptor(fds[0]),
                SafeDescriptor::from_raw_descriptor(fds[1]),
            )
        };
        Ok((Tube { socket: a }, Tube { socket: b }))
    }

    /// Takes over a descriptor that must be a `SOCK_SEQPACKET` socket (for example one end of
    /// a pair received from another process).
    pub fn from_safe_descriptor(socket: SafeDescriptor) -> Result<Tube> {
        let fd = socket.as_raw_descriptor();
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `kind`, which is that large.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                &mut kind as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if ret < 0 || kind != libc::SOCK_SEQPACKET {
            return Err(Error::NotSeqpacket { fd });
        }
        Ok(Tube { socket })
    }

    /// Sends `msg` without descriptors.
    pub fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<()> {
        self.send_with_descriptors(msg, &[])
    }

    /// Sends `msg` with `descriptors` attached (duplicated into the receiver).
    pub fn send_with_descriptors<T: Serialize + ?Sized>(
        &self,
        msg: &T,
        descriptors: &[&dyn AsRawDescriptor],
    ) -> Result<()> {
        let packet = postcard::to_extend(msg, vec![HEADER]).map_err(Error::Serialize)?;
        self.send_packet(&packet, descriptors)
    }

    /// Sends bytes as one packet, as they are (the header is the caller's). For tests and
    /// tools that speak the wire format by hand.
    pub fn send_raw(&self, packet: &[u8], descriptors: &[&dyn AsRawDescriptor]) -> Result<()> {
        self.send_packet(packet, descriptors)
    }

    fn send_packet(&self, packet: &[u8], descriptors: &[&dyn AsRawDescriptor]) -> Result<()> {
        if packet.len() > MAX_MESSAGE_SIZE + 1 {
            return Err(Error::Oversized {
                len: packet.len().saturating_sub(1),
                max: MAX_MESSAGE_SIZE,
            });
        }
        if descriptors.len() > MAX_DESCRIPTORS {
            return Err(Error::TooManyDescriptors {
                count: descriptors.len(),
                max: MAX_DESCRIPTORS,
            });
        }
        let mut fds = [0 as RawFd; MAX_DESCRIPTORS];
        for (slot, d) in fds.iter_mut().zip(descriptors) {
            *slot = d.as_raw_descriptor();
        }
        let socket = Socket(self.socket.as_raw_descriptor());
        match socket.send_with_fds(&[packet], &fds[..descriptors.len()]) {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.errno() {
                libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN => Error::Disconnected,
                libc::EAGAIN => Error::Timeout,
                errno => Error::Send(std::io::Error::from_raw_os_error(errno)),
            }),
        }
    }

    /// Receives a message that must carry no descriptors.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T> {
        let (msg, descriptors) = self.recv_with_descriptors()?;
        if !descriptors.is_empty() {
            return Err(Error::UnexpectedDescriptors {
                count: descriptors.len(),
            });
        }
        Ok(msg)
    }

    /// Receives a message and the descriptors attached to it.
    pub fn recv_with_descriptors<T: DeserializeOwned>(&self) -> Result<(T, Vec<SafeDescriptor>)> {
        let (packet, descriptors) = self.recv_raw()?;
        Ok((decode(&packet)?, descriptors))
    }

    /// Receives one packet, whole, with its descriptors, without decoding it (a server can
    /// then answer a message that does not decode instead of dropping the connection). The
    /// packet includes the header byte; [`decode`] checks and strips it.
    pub fn recv_raw(&self) -> Result<(Vec<u8>, Vec<SafeDescriptor>)> {
        // One byte more than the largest packet, so an oversized one shows as a full buffer.
        let capacity = MAX_MESSAGE_SIZE + 2;
        let mut packet: Vec<u8> = Vec::with_capacity(capacity);
        let mut iovecs = [libc::iovec {
            iov_base: packet.as_mut_ptr() as *mut libc::c_void,
            iov_len: capacity,
        }];
        let mut fds = [-1 as RawFd; SCM_MAX_FD];
        let socket = Socket(self.socket.as_raw_descriptor());
        // SAFETY: the iovec points at `capacity` bytes of `packet`'s spare capacity, which the
        // kernel may overwrite with anything; `fds` has room for the descriptors asked for.
        let received = unsafe { socket.recv_with_fds(&mut iovecs, &mut fds) };
        let (len, count) = match received {
            Ok(r) => r,
            Err(e) => {
                return Err(match e.errno() {
                    libc::EAGAIN => Error::Timeout,
                    libc::ECONNRESET => Error::Disconnected,
                    // vmm-sys-util answers ENOBUFS for truncated control data, which room for
                    // SCM_MAX_FD descriptors rules out; should it happen, it closed what it got.
                    libc::ENOBUFS => Error::TooManyDescriptors {
                        count: SCM_MAX_FD,
                        max: MAX_DESCRIPTORS,
                    },
                    errno => Error::Recv(std::io::Error::from_raw_os_error(errno)),
                });
            }
        };
        // Own every received descriptor first, so that any refusal below closes them.
        let descriptors: Vec<SafeDescriptor> = fds[..count]
            .iter()
            // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
            .map(|&fd| unsafe { SafeDescriptor::from_raw_descriptor(fd) })
            .collect();
        for d in &descriptors {
            // vmm-sys-util receives without MSG_CMSG_CLOEXEC; keep them out of exec'd children.
            // SAFETY: F_SETFD changes only the flags of a descriptor we own.
            unsafe { libc::fcntl(d.as_raw_descriptor(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        if len == 0 {
            return Err(Error::Disconnected);
        }
        if count > MAX_DESCRIPTORS {
            return Err(Error::TooManyDescriptors {
                count,
                max: MAX_DESCRIPTORS,
            });
        }
        if len > MAX_MESSAGE_SIZE + 1 {
            return Err(Error::Oversized {
                len: len - 1,
                max: MAX_MESSAGE_SIZE,
            });
        }
        // SAFETY: the kernel wrote `len <= capacity` bytes into the buffer.
        unsafe { packet.set_len(len) };
        Ok((packet, descriptors))
    }

    /// Sets how long a receive waits before [`Error::Timeout`]; `None` waits forever.
    pub fn set_recv_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.set_timeout(libc::SO_RCVTIMEO, "receive", timeout)
    }

    /// Sets how long a send waits for room before [`Error::Timeout`]; `None` waits forever.
    pub fn set_send_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.set_timeout(libc::SO_SNDTIMEO, "send", timeout)
    }

    fn set_timeout(
        &self,
        option: libc::c_int,
        which: &'static str,
        timeout: Option<Duration>,
    ) -> Result<()> {
        // A zero timeval means "forever" to the kernel, so a zero Duration becomes 1 µs.
        let tv = match timeout {
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            Some(d) => libc::timeval {
                tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_usec: d.subsec_micros().max(u32::from(d.as_secs() == 0)) as libc::suseconds_t,
            },
        };
        // SAFETY: setsockopt reads one timeval from `tv`, which lives across the call.
        let ret = unsafe {
            libc::setsockopt(
                self.socket.as_raw_descriptor(),
                libc::SOL_SOCKET,
                option,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(Error::SetTimeout {
                which,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Decodes a packet received with [`Tube::recv_raw`]: checks the header, decodes the body,
/// and refuses bytes left over.
pub fn decode<T: DeserializeOwned>(packet: &[u8]) -> Result<T> {
    let Some((&HEADER, body)) = packet.split_first() else {
        return Err(Error::BadHeader { len: packet.len() });
    };
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|source| Error::Deserialize {
        len: body.len(),
        source,
    })?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes {
            len: body.len(),
            left: rest.len(),
        });
    }
    Ok(msg)
}

impl AsFd for Tube {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl IntoRawDescriptor for Tube {
    fn into_raw_descriptor(self) -> RawDescriptor {
        self.socket.into_raw_descriptor()
    }
}

impl From<Tube> for SafeDescriptor {
    fn from(tube: Tube) -> SafeDescriptor {
        tube.socket
    }
}
