// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Tube`]: one end of a connected `SOCK_SEQPACKET` pair that carries serde messages, with
//! file descriptors attached (`SCM_RIGHTS`).
//!
//! Each message is one packet: a header byte, then the message in `postcard`'s compact
//! format. Packets are bounded ([`MAX_MESSAGE_SIZE`] bytes, [`MAX_DESCRIPTORS`] descriptors);
//! a packet over either bound is refused whole, and every descriptor that came with a refused
//! packet is closed, so a hostile peer can neither make us allocate without bound nor leak
//! descriptors into us. Received descriptors are close-on-exec from the moment they exist
//! (`MSG_CMSG_CLOEXEC`), so a child another thread spawns meanwhile never inherits one.

use std::mem::size_of;
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
/// that many means the descriptors never overflow the control buffer, so every descriptor a
/// peer sends becomes ours to close, however many it sends.
const SCM_MAX_FD: usize = 253;
/// `SCM_PIDFD` (`include/linux/socket.h`, the same on every architecture; libc does not name
/// it): the kernel attaches a pidfd of the sender to every message when `SO_PASSPIDFD` is set
/// on the receiving socket.
const SCM_PIDFD: libc::c_int = 0x04;
/// Room for the control data of one message: `SCM_RIGHTS` with [`SCM_MAX_FD`] descriptors,
/// plus the `SCM_CREDENTIALS` and `SCM_PIDFD` messages the kernel adds when `SO_PASSCRED` or
/// `SO_PASSPIDFD` is set on the socket. A tube never sets them, but a socket taken over with
/// [`Tube::from_safe_descriptor`] may come with them set.
const CONTROL_SPACE: usize = cmsg_space(SCM_MAX_FD * size_of::<libc::c_int>())
    + cmsg_space(size_of::<libc::ucred>())
    + cmsg_space(size_of::<libc::c_int>());
/// First byte of every packet. On a `SOCK_SEQPACKET` socket `recvmsg` answers 0 bytes both for
/// an empty packet and at end-of-stream, so every packet carries at least this byte.
const HEADER: u8 = 0x7b;

/// `CMSG_SPACE(len)`: the bytes one control message with `len` bytes of data takes.
const fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes with its argument; it touches no memory. Every length
    // given here is a small constant, far below `c_uint::MAX`.
    unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize }
}

/// A control buffer for `recvmsg`, aligned for the `cmsghdr`s the kernel writes into it.
#[repr(C)]
struct ControlBuffer {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; CONTROL_SPACE],
}

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
    /// The control data of a received message did not fit the buffer. The kernel drops what
    /// does not fit, descriptors included, and the descriptors that did arrive were closed; how
    /// many the peer sent is unknown. The packet was consumed whole.
    #[error(
        "control data of a received message was truncated; {received} descriptors arrived and \
         were closed, any others were dropped by the kernel"
    )]
    ControlTruncated {
        /// How many descriptors arrived (before the truncation).
        received: usize,
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
    /// A packet of zero bytes, which cannot be a tube message: every message carries at least
    /// the header byte. Refused on sending; a received one is answered by [`decode`].
    #[error(
        "empty packet (0 bytes): a tube packet carries at least the header byte {HEADER:#04x}"
    )]
    EmptyPacket,
    /// The descriptor is not a `SOCK_SEQPACKET` socket.
    #[error("descriptor {fd} is not a SOCK_SEQPACKET socket")]
    NotSeqpacket {
        /// The descriptor.
        fd: RawDescriptor,
    },
    /// A message larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {len} bytes is over the limit of {max}")]
    Oversized {
        /// The message's length (the received packet's, less the header byte).
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
        /// How many it carried.
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

/// The socket as vmm-sys-util's `ScmSocket`, for its SCM_RIGHTS send. Receiving is
/// [`Tube::recv_packet`]'s own: vmm-sys-util's takes no `recvmsg` flags, so the descriptors it
/// receives are not close-on-exec from the start, and it reads only the first control message.
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
    /// tools that speak the wire format by hand. An empty packet is refused
    /// ([`Error::EmptyPacket`]): the receiver could not tell it from the end of the stream
    /// without asking the kernel again, and it cannot be a message.
    pub fn send_raw(&self, packet: &[u8], descriptors: &[&dyn AsRawDescriptor]) -> Result<()> {
        self.send_packet(packet, descriptors)
    }

    fn send_packet(&self, packet: &[u8], descriptors: &[&dyn AsRawDescriptor]) -> Result<()> {
        if packet.is_empty() {
            return Err(Error::EmptyPacket);
        }
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
    /// packet includes the header byte; [`decode`] checks and strips it. An empty packet from
    /// a peer still connected is returned as such, and [`decode`] answers
    /// [`Error::EmptyPacket`] for it; end-of-stream is [`Error::Disconnected`].
    ///
    /// The descriptors are close-on-exec from the moment the kernel creates them.
    pub fn recv_raw(&self) -> Result<(Vec<u8>, Vec<SafeDescriptor>)> {
        self.recv_packet(CONTROL_SPACE)
    }

    /// [`Tube::recv_raw`] with a control buffer of `control_len` bytes (at most
    /// [`CONTROL_SPACE`]); tests pass less to make the kernel truncate the control data.
    fn recv_packet(&self, control_len: usize) -> Result<(Vec<u8>, Vec<SafeDescriptor>)> {
        // One byte more than the largest packet, so an oversized one is never a full fit.
        let capacity = MAX_MESSAGE_SIZE + 2;
        let mut packet: Vec<u8> = Vec::with_capacity(capacity);
        let mut iov = libc::iovec {
            iov_base: packet.as_mut_ptr().cast(),
            iov_len: capacity,
        };
        let mut control = ControlBuffer {
            _align: [],
            bytes: [0; CONTROL_SPACE],
        };
        // SAFETY: msghdr holds only integers and raw pointers, for which all-zero bytes are
        // valid values (no name, no buffers, no flags); the fields that matter are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        msg.msg_controllen = control_len.min(CONTROL_SPACE) as _;
        // SAFETY: `msg` names one iovec of `capacity` bytes of `packet`'s spare capacity, which
        // the kernel may fill with anything (nothing reads it before `set_len` below), and
        // `msg_controllen` bytes of `control`, aligned for cmsghdr. `iov`, `packet` and
        // `control` all outlive the call, and the kernel writes only within them and `msg`.
        // MSG_TRUNC makes it answer a packet's real length even when it does not fit;
        // MSG_CMSG_CLOEXEC makes the descriptors it installs close-on-exec atomically.
        let ret = unsafe {
            libc::recvmsg(
                self.socket.as_raw_descriptor(),
                &mut msg,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
            )
        };
        // A failed recvmsg installs no descriptor, so there is nothing to close.
        let Ok(len) = usize::try_from(ret) else {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAGAIN) => Error::Timeout,
                Some(libc::ECONNRESET) => Error::Disconnected,
                _ => Error::Recv(e),
            });
        };
        // Own every received descriptor first, so that any refusal below closes them.
        // SAFETY: `msg` was just filled by a successful recvmsg; its control buffer `control`
        // is aligned for cmsghdr and still alive, and nothing owns the descriptors in it yet.
        let descriptors = unsafe { take_descriptors(&msg) };
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(Error::ControlTruncated {
                received: descriptors.len(),
            });
        }
        // recvmsg answers 0 both at end-of-stream and for an empty packet. End-of-stream
        // brings no control data; an empty packet may bring some, which settles it.
        if len == 0 && msg.msg_controllen == 0 && self.at_end_of_stream()? {
            return Err(Error::Disconnected);
        }
        if descriptors.len() > MAX_DESCRIPTORS {
            return Err(Error::TooManyDescriptors {
                count: descriptors.len(),
                max: MAX_DESCRIPTORS,
            });
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_MESSAGE_SIZE + 1 {
            return Err(Error::Oversized {
                len: len.saturating_sub(1),
                max: MAX_MESSAGE_SIZE,
            });
        }
        // SAFETY: the kernel wrote `len` bytes into the buffer, and `len <= MAX_MESSAGE_SIZE
        // + 1 < capacity`, checked just above.
        unsafe { packet.set_len(len) };
        Ok((packet, descriptors))
    }

    /// After a receive of zero bytes: whether that was end-of-stream rather than an empty
    /// packet. A peer that closed its end or shut it down for writing always shows `POLLHUP`
    /// or `POLLRDHUP`; one still connected shows neither, so its zero bytes were a packet.
    ///
    /// A peer gone may still have packets queued behind an empty one (the kernel answers
    /// end-of-stream only once the queue is empty), so bytes queued anywhere behind it
    /// (`SIOCINQ` counts them all on a seqpacket socket) also mean the zero bytes were a packet. An empty packet followed only by more empty ones and the
    /// peer's close reads as end-of-stream: nothing of it could have been decoded anyway.
    fn at_end_of_stream(&self) -> Result<bool> {
        let fd = self.socket.as_raw_descriptor();
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        loop {
            // SAFETY: poll reads and writes the one pollfd it is given, which lives across the
            // call; a zero timeout means it never blocks.
            if unsafe { libc::poll(&mut poll, 1, 0) } >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::Recv(e));
            }
        }
        if poll.revents & (libc::POLLHUP | libc::POLLRDHUP) == 0 {
            return Ok(false);
        }
        // On a SOCK_SEQPACKET socket SIOCINQ (FIONREAD) counts the bytes of every queued packet, so a
        // non-zero count means packets with bytes are still queued behind the empty one.
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, into `queued`, which lives across the call.
        let ret = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
        Ok(ret < 0 || queued <= 0)
    }

    /// Makes sends and receives return [`Error::Timeout`] at once instead of waiting, when the
    /// peer's buffer is full or no message is queued (`O_NONBLOCK`). A server that must not
    /// wait on a client that does not read its answers sets this on its end.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        let fd = self.socket.as_raw_descriptor();
        // SAFETY: F_GETFL and F_SETFL read and change only the flags of a socket we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(Error::Socket(std::io::Error::last_os_error()));
        }
        Ok(())
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
/// and refuses bytes left over. An empty packet is [`Error::EmptyPacket`].
pub fn decode<T: DeserializeOwned>(packet: &[u8]) -> Result<T> {
    if packet.is_empty() {
        return Err(Error::EmptyPacket);
    }
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

/// Takes ownership of every descriptor the kernel installed for one received message: those
/// of `SCM_RIGHTS`, returned in order, and an `SCM_PIDFD`, closed at once (it is not part of
/// the message). Other control messages carry no descriptors and are skipped.
///
/// # Safety
///
/// `msg` must be the header just filled by a successful `recvmsg`, its `msg_control` must
/// point at a live buffer of at least `msg_controllen` bytes aligned for `cmsghdr`, and no
/// descriptor in it may be owned by anything yet.
unsafe fn take_descriptors(msg: &libc::msghdr) -> Vec<SafeDescriptor> {
    let mut descriptors = Vec::new();
    // `msg_controllen` and `cmsg_len` are size_t with glibc, but 32-bit with musl.
    #[allow(clippy::unnecessary_cast)]
    let control_end = (msg.msg_control as usize).saturating_add(msg.msg_controllen as usize);
    // SAFETY: the caller guarantees `msg` describes a live control buffer; CMSG_FIRSTHDR
    // answers its start only if a whole cmsghdr fits in `msg_controllen`, else null.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR and CMSG_NXTHDR answer only headers that lie whole inside the
        // control buffer, at offsets the kernel aligned for cmsghdr within an aligned buffer.
        let header = unsafe { cmsg.read() };
        // SAFETY: CMSG_DATA only computes the address just past the header, which lies whole
        // inside the buffer, so the result is inside it or one past its end.
        let data: *const u8 = unsafe { libc::CMSG_DATA(cmsg) };
        // The data ends where the header says, but never past what the kernel wrote.
        let data_end = (cmsg as usize)
            .saturating_add(header.cmsg_len as usize)
            .min(control_end);
        let count = data_end.saturating_sub(data as usize) / size_of::<libc::c_int>();
        let kind = (header.cmsg_level, header.cmsg_type);
        if kind == (libc::SOL_SOCKET, libc::SCM_RIGHTS) || kind == (libc::SOL_SOCKET, SCM_PIDFD) {
            for i in 0..count {
                // SAFETY: the `i`th int of this control message's data lies inside the control
                // buffer (`count` was bounded by `data_end` above), so both the offset and the
                // read stay within it. It may be unaligned for an int, hence read_unaligned.
                let fd = unsafe {
                    data.add(i * size_of::<libc::c_int>())
                        .cast::<libc::c_int>()
                        .read_unaligned()
                };
                // SAFETY: the kernel installed this descriptor for us in this recvmsg, and the
                // caller guarantees nothing owns it yet; it is taken exactly once.
                let owned = unsafe { SafeDescriptor::from_raw_descriptor(fd) };
                if header.cmsg_type == libc::SCM_RIGHTS {
                    descriptors.push(owned);
                }
            }
        }
        // SAFETY: `msg` still describes the live control buffer and `cmsg` is a header inside
        // it; CMSG_NXTHDR answers null once no further whole header fits.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    descriptors
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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn truncated_control_data_closes_what_arrived_and_counts_only_that() {
        let (a, b) = Tube::pair().unwrap();
        let ends: Vec<_> = (0..3).map(|_| std::io::pipe().unwrap()).collect();
        let refs: Vec<&dyn AsRawDescriptor> = ends
            .iter()
            .map(|(_, w)| w as &dyn AsRawDescriptor)
            .collect();
        a.send_with_descriptors(&7u8, &refs).unwrap();
        let readers: Vec<_> = ends.into_iter().map(|(r, _)| r).collect();
        // Room for one descriptor of the three: a header and one int, no padding after it.
        let err = b
            .recv_packet(cmsg_space(0) + size_of::<libc::c_int>())
            .unwrap_err();
        assert!(
            matches!(err, Error::ControlTruncated { received: 1 }),
            "{err}"
        );
        // The one that arrived was closed by us, the others by the kernel.
        for mut reader in readers {
            // SAFETY: F_SETFL changes only the flags of a descriptor we own.
            unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            assert!(
                matches!(reader.read(&mut [0u8; 1]), Ok(0)),
                "a write end is open"
            );
        }
        // The refused message was consumed whole; the tube goes on.
        a.send(&8u8).unwrap();
        assert_eq!(b.recv::<u8>().unwrap(), 8);
    }

    #[test]
    fn the_control_buffer_fits_scm_max_fd_descriptors_and_is_aligned() {
        assert!(std::mem::align_of::<ControlBuffer>() >= std::mem::align_of::<libc::cmsghdr>());
        assert!(CONTROL_SPACE >= cmsg_space(SCM_MAX_FD * size_of::<libc::c_int>()));
    }
}
