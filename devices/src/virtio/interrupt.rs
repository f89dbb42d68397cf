// Copyright 2026 The VMM memory crates authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Interrupt`]: how a device tells the driver that it used buffers or changed its config,
//! through an eventfd: the one KVM's irqfd turns into a guest interrupt, and the one a
//! vhost-user frontend hands over as a queue's call fd.

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line to the driver, raised by writing to an eventfd.
#[derive(Debug)]
pub struct Interrupt {
    event: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `event` (registered with KVM as an irqfd, say).
    pub fn new(event: EventFd) -> Interrupt {
        Interrupt { event }
    }

    /// The eventfd, to register with KVM or hand to a vhost-user frontend.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// Raises the interrupt. A full counter (a driver that never acknowledges) only means the
    /// interrupt is already pending, so it is not an error.
    pub fn signal(&self) {
        if let Err(e) = self.event.write(1) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                log::error!("virtio: cannot raise the interrupt: {e}");
            }
        }
    }
}
