//! The source QEMU's migration sockets, reached from outside QEMU to bound what waits in
//! them unsent.
//!
//! QEMU pauses the guest when the RAM it has left fits the switch-over target at the
//! measured rate, but it counts as sent whatever it has written to the socket. The kernel
//! lets a TCP socket hold megabytes not yet on the wire (`tcp_wmem` up to 4 MiB here), so at
//! the pause there is a backlog of the previous pass's data in front of the last pages and
//! the device state: ~30 ms at 1 Gbit/s, measured here as the "load" piece of the pause
//! (`ferry_migration::pause`). `TCP_NOTSENT_LOWAT` bounds the bytes a socket holds unsent
//! (a write waits instead), without bounding what is in flight, so it does not cost
//! throughput on a long link the way a smaller send buffer would. QEMU has no option for it,
//! so the agent duplicates QEMU's socket (`pidfd_getfd`, Linux 5.6) and sets it there. It is
//! set near the end of the stream only: early on, a deeper buffer keeps the link busy while
//! QEMU's migration thread waits for a CPU.
//!
//! The sockets are found as `ss` finds them: the `socket:[INODE]` links in
//! `/proc/PID/fd` against the inodes of established connections to the destination in
//! `/proc/PID/net/tcp{,6}` (QEMU's own network namespace).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// One established TCP connection of a `/proc/net/tcp{,6}` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub remote: SocketAddr,
    pub inode: u64,
}

/// The established connections of a `/proc/net/tcp` or `/proc/net/tcp6` table (header and
/// anything malformed skipped).
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode ...
            if f.len() < 10 || f[3] != "01" {
                return None;
            }
            Some(TcpEntry {
                remote: parse_address(f[2])?,
                inode: f[9].parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit
/// word of the address as a native-endian number, the port as a plain one.
fn parse_address(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(addr)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The peer of a `tcp:HOST:PORT` migration URI, when HOST is an address.
pub fn peer_of_uri(uri: &str) -> Option<SocketAddr> {
    uri.strip_prefix("tcp:")?.parse().ok()
}

/// The inode of a `socket:[INODE]` fd link.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// QEMU's fds of established connections to `peer` (the main stream and any multifd
/// channels).
fn fds_to(pid: u32, peer: SocketAddr) -> std::io::Result<Vec<RawFd>> {
    let mut inodes = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        inodes.extend(
            parse_tcp_table(&text)
                .into_iter()
                .filter(|e| same_peer(e.remote, peer))
                .map(|e| e.inode),
        );
    }
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let inode = link.to_str().and_then(socket_inode);
        let fd = entry.file_name().to_str().and_then(|n| n.parse().ok());
        if let (Some(inode), Some(fd)) = (inode, fd) {
            if inodes.contains(&inode) {
                fds.push(fd);
            }
        }
    }
    Ok(fds)
}

/// An IPv4 peer also shows as `::ffff:a.b.c.d` on a dual-stack socket.
fn same_peer(seen: SocketAddr, peer: SocketAddr) -> bool {
    let canonical = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    canonical(seen) == canonical(peer)
}

/// A duplicate of `pid`'s fd `fd` (the same open socket).
fn duplicate(pid: u32, fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; each returned fd is owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let dup = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(dup as RawFd))
    }
}

/// Bounds the unsent bytes of every connection of QEMU `pid` to `peer` at `bytes`; how many
/// sockets it set.
pub fn limit_unsent(pid: u32, peer: SocketAddr, bytes: u32) -> std::io::Result<usize> {
    let mut set = 0;
    for fd in fds_to(pid, peer)? {
        let socket = duplicate(pid, fd)?;
        let value = bytes as libc::c_int;
        // SAFETY: a valid fd and a pointer to a c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set += 1;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_come_with_peer_and_inode() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 0B011FAC:A1B2 0C011FAC:9E5F 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0
   2: garbage
";
        assert_eq!(
            parse_tcp_table(v4),
            vec![TcpEntry {
                remote: "172.31.1.12:40543".parse().unwrap(),
                inode: 222
            }]
        );
        // ::ffff:172.31.1.12 port 40543, as a dual-stack socket shows it.
        let v6 = "header
   0: 0000000000000000FFFF00000B011FAC:A1B2 0000000000000000FFFF00000C011FAC:9E5F 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0
";
        let e = parse_tcp_table(v6);
        assert_eq!(e.len(), 1);
        assert!(
            same_peer(e[0].remote, "172.31.1.12:40543".parse().unwrap()),
            "{e:?}"
        );
        assert!(!same_peer(
            e[0].remote,
            "172.31.1.12:40544".parse().unwrap()
        ));
    }

    #[test]
    fn uris_and_fd_links() {
        assert_eq!(
            peer_of_uri("tcp:10.0.0.2:4444"),
            "10.0.0.2:4444".parse().ok()
        );
        assert_eq!(peer_of_uri("tcp:[::1]:4444"), "[::1]:4444".parse().ok());
        assert_eq!(peer_of_uri("unix:/x"), None);
        assert_eq!(peer_of_uri("tcp:host.example:4444"), None);
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    /// A real connection of this very process: found by its peer and bounded.
    #[test]
    fn a_live_socket_is_found_and_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(peer).unwrap();
        let _server = listener.accept().unwrap();
        let pid = std::process::id();
        assert_eq!(fds_to(pid, peer).unwrap().len(), 1);
        assert_eq!(limit_unsent(pid, peer, 128 << 10).unwrap(), 1);
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(limit_unsent(pid, nobody, 128 << 10).unwrap(), 0);
    }
}
