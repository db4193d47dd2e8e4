//! The system calls behind [`crate::frames`]: taking a duplicate of QEMU's tun descriptor
//! (pidfd_open + pidfd_getfd, root), reading it without blocking, and AF_PACKET sockets
//! on a tap to inject frames and to time the guest's own. Each unsafe block is one call
//! with arguments built right there; everything else is in `frames`, unit-tested.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `_IOR('T', 215, int)`: the virtio-net header length the tun prepends to each read.
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
/// `_IOR('T', 210, unsigned int)`: the tun's flags.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `SOL_PACKET` option: each sent frame is preceded by a `struct virtio_net_hdr`.
const PACKET_VNET_HDR: libc::c_int = 15;
const ETH_P_ALL: u16 = 0x0003;

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A duplicate of descriptor `fd` of process `pid` (needs ptrace rights over it: root).
pub fn take_fd(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: pidfd_getfd takes a pidfd, the target's fd number and flags.
    let dup = check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: a new descriptor of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// How many bytes of virtio-net header each read of this tun descriptor starts with
/// (0 without IFF_VNET_HDR).
pub fn tun_vnet_hdr_len(fd: &OwnedFd) -> io::Result<usize> {
    let mut ifr = [0u8; 40]; // struct ifreq: name[16] then a union; flags at 16
                             // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes) into the buffer.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, ifr.as_mut_ptr()) } as libc::c_long)?;
    let flags = libc::c_short::from_ne_bytes([ifr[16], ifr[17]]);
    if flags & IFF_VNET_HDR == 0 {
        return Ok(0);
    }
    let mut len: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETVNETHDRSZ, &mut len) } as libc::c_long)?;
    usize::try_from(len).map_err(|_| io::Error::other("negative vnet header length"))
}

/// Waits up to `timeout` for any of `fds` to be readable; the indices that are.
pub fn wait_readable(fds: &[&OwnedFd], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: the pollfd array lives across the call and its length is passed.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    Ok(polls
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents & libc::POLLIN != 0)
        .map(|(i, _)| i)
        .collect())
}

/// One read without blocking: Some(length) or None when the queue is empty.
pub fn read_nonblocking(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A tun is not a socket: recv() fails with ENOTSOCK, so fall back to read() (the
        // descriptor is O_NONBLOCK already: QEMU set it on the shared file description).
        Some(libc::ENOTSOCK) => {
            // SAFETY: as above.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            }
        }
        _ if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        _ => Err(e),
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
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    };
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

/// What a capture saw of one frame: its direction and its first bytes.
pub struct Seen {
    /// Sent out of the tap towards the guest (PACKET_OUTGOING); otherwise the guest sent it.
    pub to_guest: bool,
    /// The frame's first bytes (up to 64).
    pub head: Vec<u8>,
}

/// Watches a tap: every frame in either direction, truncated to its first 64 bytes.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// `poll`: how long [`Capture::next`] waits before it returns None.
    pub fn open(ifindex: i32, poll: Duration) -> io::Result<Capture> {
        let fd = packet_socket(ifindex, ETH_P_ALL)?;
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
        Ok(Capture { fd })
    }

    /// The next frame, or None after the poll time without one.
    pub fn next(&self) -> io::Result<Option<Seen>> {
        let mut buf = [0u8; 64];
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the buffer, the address and its length live across the call; MSG_TRUNC
        // only changes the returned length.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let kept = (n as usize).min(buf.len());
        Ok(Some(Seen {
            to_guest: addr.sll_pkttype == libc::PACKET_OUTGOING as u8,
            head: buf[..kept].to_vec(),
        }))
    }
}
