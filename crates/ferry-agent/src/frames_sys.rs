//! The system calls behind [`crate::frames`]: AF_PACKET sockets on a tap, one to copy
//! every frame that passes (with its virtio-net header, so a frame for the guest can be
//! handed on as it is) and one to inject frames. Each unsafe block is one call with
//! arguments built right there; the decisions are in `frames`, unit-tested.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `SOL_PACKET` option: each frame sent or received is preceded by a `struct
/// virtio_net_hdr` (checksum and GSO state, which a raw copy of the bytes would lose).
const PACKET_VNET_HDR: libc::c_int = 15;
const ETH_P_ALL: u16 = 0x0003;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> io::Result<i32> {
    let c = CString::new(name).map_err(|_| io::Error::other("interface name with a NUL"))?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(i).map_err(|_| io::Error::other("interface index out of range"))
}

fn packet_socket(ifindex: i32, protocol: u16) -> io::Result<OwnedFd> {
    // Created with protocol 0 and given `protocol` only by the bind: a socket created with
    // ETH_P_ALL hooks every interface at once, and binding it to one then unhooks it with
    // an RCU grace period (`synchronize_net`): ~10 ms measured here, on the destination's
    // way to answering `prepare_incoming`.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    check(fd as libc::c_long)?;
    // SAFETY: a new descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: the address and its size describe a sockaddr_ll on our stack.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } as libc::c_long)?;
    Ok(fd)
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option, its pointer and size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(|_| ())
}

/// Sends frames out of a tap, which on a tap means to the guest: the tun queues them for
/// QEMU, which reads them as soon as the guest can receive (at once if it runs, at resume
/// if it waits for its migration).
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// Protocol 0: this socket sends only and receives nothing.
    pub fn open(ifindex: i32) -> io::Result<Injector> {
        let fd = packet_socket(ifindex, 0)?;
        set_int_opt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1)?;
        Ok(Injector { fd })
    }

    /// `frame`: a virtio-net header then the Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sends frame.len() bytes from frame on the bound socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        check(n as libc::c_long).map(|_| ())
    }
}

/// What a capture saw of one frame.
pub struct Seen {
    /// Sent out of the tap towards the guest (PACKET_OUTGOING); otherwise the guest sent it.
    pub to_guest: bool,
    /// The virtio-net header, then the frame (the first `buf` bytes of it).
    pub data: Vec<u8>,
    /// The whole frame did not fit the buffer.
    pub truncated: bool,
    /// When the kernel saw it (when this thread read it, if the kernel did not say).
    pub at: SystemTime,
}

/// A copy of every frame through a tap, in either direction. The kernel copies a frame to
/// it before the tap's own queue (`dev_queue_xmit_nit`), so a frame QEMU reads but cannot
/// deliver, or one the tap's queue drops, is still seen.
pub struct Capture {
    fd: OwnedFd,
    buf: Vec<u8>,
}

/// The capture's socket buffer: room for a burst while the guest is paused.
const CAPTURE_RCVBUF: libc::c_int = 8 << 20;

impl Capture {
    /// `poll`: how long [`Capture::recv`] waits before it returns None.
    pub fn open(ifindex: i32, poll: Duration) -> io::Result<Capture> {
        let fd = packet_socket(ifindex, ETH_P_ALL)?;
        set_int_opt(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1)?;
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        // RCVBUFFORCE passes the system's limit (root); plain RCVBUF is capped by it.
        if set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, CAPTURE_RCVBUF).is_err() {
            set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, CAPTURE_RCVBUF)?;
        }
        let tv = libc::timeval {
            tv_sec: poll.as_secs() as libc::time_t,
            tv_usec: poll.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a timeval option, its pointer and size.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        } as libc::c_long)?;
        Ok(Capture {
            fd,
            buf: vec![0u8; ferry_api::frames::VNET_HDR_LEN + ferry_api::frames::MAX_FRAME_BYTES],
        })
    }

    /// The next frame, or None after the poll time without one.
    pub fn recv(&mut self) -> io::Result<Option<Seen>> {
        let buf = &mut self.buf;
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for one SCM_TIMESTAMPNS (a struct timespec), u64-aligned.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; the fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in msg refers to a buffer that outlives the call; MSG_TRUNC
        // only changes the returned length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let at = kernel_stamp(&msg).unwrap_or_else(SystemTime::now);
        let kept = (n as usize).min(buf.len());
        Ok(Some(Seen {
            to_guest: addr.sll_pkttype == libc::PACKET_OUTGOING,
            data: buf[..kept].to_vec(),
            truncated: kept < n as usize,
            at,
        }))
    }
}

/// The time the kernel stamped the frame with (SO_TIMESTAMPNS), if it did: when the frame
/// passed the tap, not when this thread got round to reading it.
fn kernel_stamp(msg: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header inside the control buffer.
        let h = unsafe { &*cmsg };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_TIMESTAMPNS {
            // SAFETY: SCM_TIMESTAMPNS carries one struct timespec; read unaligned.
            let ts: libc::timespec =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
            let since = Duration::new(u64::try_from(ts.tv_sec).ok()?, ts.tv_nsec as u32);
            return UNIX_EPOCH.checked_add(since);
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}
