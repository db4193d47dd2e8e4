//! The guest's TCP service: a line-based echo that also reports the workload's counters.
//!
//! It gives tests a long-lived TCP connection into the VM whose answers prove that the guest
//! is alive and that the connection survived (e.g. a live migration: the kernel's TCP state
//! moves with the guest's RAM, so nothing special is needed here).
//!
//! Protocol, one request per line, answers in order on the same connection:
//!
//! ```text
//! client: <token>\n                  token = 1..=64 printable ASCII chars, no spaces
//! guest:  <token> tick=<t> mismatches=<m>\n
//! client: bad token\n
//! guest:  error <reason>\n           the connection stays open
//! ```
//!
//! `tick` is the number of the last status line printed, `mismatches` the total of
//! mismatching pages found so far (see [`Counters`]). A trailing `\r` before the `\n` is
//! ignored. At most [`MAX_CONNECTIONS`] connections are served at once, one thread each;
//! further ones get `error too many connections ...` and are closed.
//!
//! Every connection thread blocks in `read`, so an idle service costs no CPU, which matters
//! in a one-vCPU TCG guest where the memory workload uses all the rest.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::workload::Counters;

/// Longest accepted token.
pub const MAX_TOKEN_LEN: usize = 64;
/// Most connections served at the same time.
pub const MAX_CONNECTIONS: usize = 32;
/// Stack size of a connection thread: the handler needs very little.
const CONN_STACK: usize = 128 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A valid answer, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The token of the request, echoed.
    pub token: String,
    /// Workload tick when the request was answered.
    pub tick: u64,
    /// Workload mismatch total when the request was answered.
    pub mismatches: u64,
}

impl fmt::Display for Answer {
    /// Wire form without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tick={} mismatches={}",
            self.token, self.tick, self.mismatches
        )
    }
}

impl Answer {
    /// Parses an answer line (with or without its line ending). `None` for an `error` line or
    /// anything malformed.
    pub fn parse(line: &str) -> Option<Answer> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut words = line.split(' ');
        let token = words.next()?;
        check_token(token.as_bytes()).ok()?;
        let tick = words.next()?.strip_prefix("tick=")?.parse().ok()?;
        let mismatches = words.next()?.strip_prefix("mismatches=")?.parse().ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Answer {
            token: token.to_string(),
            tick,
            mismatches,
        })
    }
}

/// Checks a token (the request line without its line ending).
pub fn check_token(token: &[u8]) -> Result<&str, String> {
    if token.is_empty() {
        return Err("empty token".to_string());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!("token longer than {MAX_TOKEN_LEN} characters"));
    }
    if let Some(i) = token.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "byte 0x{:02x} at offset {i}: a token is printable ASCII without spaces",
            token[i]
        ));
    }
    // All bytes are ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|e| e.to_string())
}

/// The reply to one request line (without its `\n`; a trailing `\r` is ignored), including
/// the final `\n`.
pub fn reply(line: &[u8], counters: &Counters) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match check_token(line) {
        Ok(token) => {
            let a = Answer {
                token: token.to_string(),
                tick: counters.tick(),
                mismatches: counters.mismatches(),
            };
            format!("{a}\n")
        }
        Err(reason) => format!("error {reason}\n"),
    }
}

/// Serves one connection until the client closes it or an I/O error occurs. Lines longer
/// than a token are not buffered: the rest is skipped up to the `\n` and answered with an
/// error, so a client cannot make the guest allocate.
pub fn serve_connection(stream: TcpStream, counters: &Counters) -> io::Result<()> {
    // Answers are small and must leave at once, not wait for more data (Nagle).
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(1024, stream);
    // Token plus an optional '\r'.
    const MAX_LINE: usize = MAX_TOKEN_LEN + 1;
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            // EOF; an unterminated last line is dropped, its sender is gone anyway.
            return Ok(());
        }
        let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if complete {
            let answer = if too_long {
                format!("error token longer than {MAX_TOKEN_LEN} characters\n")
            } else {
                reply(&line, counters)
            };
            writer.write_all(answer.as_bytes())?;
            line.clear();
            too_long = false;
        }
    }
}

/// Open connections: a clone of each stream (to shut it down on stop) by connection id.
type Registry = Arc<Mutex<BTreeMap<u64, TcpStream>>>;

fn lock(r: &Registry) -> MutexGuard<'_, BTreeMap<u64, TcpStream>> {
    // A panicking connection thread cannot leave the map inconsistent.
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running service. Dropping it (or [`Service::stop`]) stops accepting, closes the open
/// connections and joins every thread.
pub struct Service {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    registry: Registry,
    accept: Option<JoinHandle<()>>,
}

impl Service {
    /// Binds `addr` (e.g. `0.0.0.0:7000`, or `127.0.0.1:0` in tests) and starts serving.
    pub fn bind(addr: impl ToSocketAddrs, counters: Arc<Counters>) -> io::Result<Service> {
        Service::start(TcpListener::bind(addr)?, counters)
    }

    /// Starts serving on an already bound listener.
    pub fn start(listener: TcpListener, counters: Arc<Counters>) -> io::Result<Service> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let registry = Registry::default();
        let accept = {
            let (stop, registry) = (stop.clone(), registry.clone());
            thread::Builder::new()
                .name("ferry-accept".to_string())
                .stack_size(CONN_STACK)
                .spawn(move || accept_loop(listener, counters, stop, registry))?
        };
        Ok(Service {
            addr,
            stop,
            registry,
            accept: Some(accept),
        })
    }

    /// The address actually bound (the port is known here when binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections being served right now.
    pub fn connections(&self) -> usize {
        lock(&self.registry).len()
    }

    /// Stops the service; same as dropping it.
    pub fn stop(self) {}
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, which blocks in accept(), with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let woken = TcpStream::connect_timeout(&wake, Duration::from_secs(2)).is_ok();
        if let Some(accept) = self.accept.take() {
            if woken {
                // The accept loop closes the open connections and joins their threads.
                let _ = accept.join();
            }
            // Otherwise the thread stays blocked in accept(); joining would hang.
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    registry: Registry,
) {
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors or memory, or a connection aborted before accept: the
                // listener is still good, try again shortly.
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        handles.retain(|h| !h.is_finished());
        let id = next_id;
        next_id += 1;
        {
            let mut open = lock(&registry);
            if open.len() >= MAX_CONNECTIONS {
                drop(open);
                let _ = stream.write_all(
                    format!("error too many connections (at most {MAX_CONNECTIONS})\n").as_bytes(),
                );
                continue;
            }
            match stream.try_clone() {
                Ok(clone) => {
                    open.insert(id, clone);
                }
                Err(_) => continue,
            }
        }
        let (counters, registry2) = (counters.clone(), registry.clone());
        let spawned = thread::Builder::new()
            .name(format!("ferry-conn-{id}"))
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _ = serve_connection(stream, &counters);
                lock(&registry2).remove(&id);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                // No thread for it: close it (dropping the registry's clone closes the socket).
                lock(&registry).remove(&id);
            }
        }
    }
    for stream in lock(&registry).values() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    for h in handles {
        let _ = h.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::Instant;

    fn counters(tick: u64, mismatches: u64) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        c.set_tick(tick);
        c.set_mismatches(mismatches);
        c
    }

    struct Client {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Client {
                writer: s.try_clone().unwrap(),
                reader: BufReader::new(s),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.writer.write_all(bytes).unwrap();
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            self.reader.read_line(&mut l).unwrap();
            l
        }

        fn ask(&mut self, req: &[u8]) -> String {
            self.send(req);
            self.line()
        }
    }

    #[test]
    fn token_rules() {
        assert_eq!(check_token(b"abc-123_XYZ~!"), Ok("abc-123_XYZ~!"));
        assert!(check_token(&[b'a'; 64]).is_ok());
        assert!(check_token(&[b'a'; 65])
            .unwrap_err()
            .contains("longer than 64"));
        assert!(check_token(b"").unwrap_err().contains("empty"));
        assert!(check_token(b"a b")
            .unwrap_err()
            .contains("0x20 at offset 1"));
        assert!(check_token(b"a\tb").is_err());
        assert!(check_token("é".as_bytes()).is_err());
        assert!(check_token(b"\x7f").is_err());
    }

    #[test]
    fn replies() {
        let c = counters(7, 2);
        assert_eq!(reply(b"hello", &c), "hello tick=7 mismatches=2\n");
        assert_eq!(reply(b"hello\r", &c), "hello tick=7 mismatches=2\n");
        assert_eq!(reply(b"", &c), "error empty token\n");
        assert!(reply(b"two words", &c).starts_with("error byte 0x20"));
        let a = Answer::parse(&reply(b"t-1", &c)).unwrap();
        assert_eq!(
            a,
            Answer {
                token: "t-1".into(),
                tick: 7,
                mismatches: 2
            }
        );
        assert_eq!(Answer::parse("error empty token\n"), None);
        assert_eq!(Answer::parse("x tick=1"), None);
        assert_eq!(Answer::parse("x tick=1 mismatches=0 more"), None);
    }

    #[test]
    fn serves_good_and_bad_lines_on_one_connection() {
        let c = counters(3, 0);
        let svc = Service::bind("127.0.0.1:0", c.clone()).unwrap();
        let mut cl = Client::connect(svc.local_addr());
        assert_eq!(cl.ask(b"first\n"), "first tick=3 mismatches=0\n");
        assert_eq!(
            cl.ask(b"bad token\n"),
            format!("error {}\n", check_token(b"bad token").unwrap_err())
        );
        assert_eq!(cl.ask(b"\n"), "error empty token\n");
        assert_eq!(cl.ask(b"crlf\r\n"), "crlf tick=3 mismatches=0\n");
        // Too long, also much longer than any buffer: skipped, answered, connection kept.
        let long = format!("{}\n", "x".repeat(65));
        assert_eq!(
            cl.ask(long.as_bytes()),
            "error token longer than 64 characters\n"
        );
        let huge = format!("{}\n", "y".repeat(100_000));
        assert_eq!(
            cl.ask(huge.as_bytes()),
            "error token longer than 64 characters\n"
        );
        let max = "z".repeat(64);
        assert_eq!(
            cl.ask(format!("{max}\n").as_bytes()),
            format!("{max} tick=3 mismatches=0\n")
        );
        // Counters are read at answer time.
        c.set_tick(4);
        c.set_mismatches(9);
        assert_eq!(cl.ask(b"after\n"), "after tick=4 mismatches=9\n");
        // A request split over several writes.
        cl.send(b"spl");
        cl.writer.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(cl.ask(b"it\n"), "split tick=4 mismatches=9\n");
        // Pipelined requests are answered in order.
        cl.send(b"a\nb b\nc\n");
        assert_eq!(cl.line(), "a tick=4 mismatches=9\n");
        assert!(cl.line().starts_with("error "));
        assert_eq!(cl.line(), "c tick=4 mismatches=9\n");
        svc.stop();
    }

    #[test]
    fn many_requests_in_a_row() {
        let c = counters(0, 0);
        let svc = Service::bind("127.0.0.1:0", c.clone()).unwrap();
        let mut cl = Client::connect(svc.local_addr());
        for i in 0..1000u64 {
            c.set_tick(i);
            let token = format!("req-{i}");
            let a = Answer::parse(&cl.ask(format!("{token}\n").as_bytes())).unwrap();
            assert_eq!(
                (a.token.as_str(), a.tick, a.mismatches),
                (token.as_str(), i, 0)
            );
        }
    }

    #[test]
    fn refuses_more_than_max_connections_and_stops_cleanly() {
        let c = counters(1, 0);
        let svc = Service::bind("127.0.0.1:0", c).unwrap();
        let addr = svc.local_addr();
        let mut clients: Vec<Client> = (0..MAX_CONNECTIONS)
            .map(|i| {
                let mut cl = Client::connect(addr);
                let a = cl.ask(format!("c{i}\n").as_bytes());
                assert_eq!(a, format!("c{i} tick=1 mismatches=0\n"));
                cl
            })
            .collect();
        assert_eq!(svc.connections(), MAX_CONNECTIONS);
        let mut extra = Client::connect(addr);
        assert_eq!(extra.line(), "error too many connections (at most 32)\n");
        let mut rest = Vec::new();
        assert_eq!(extra.reader.read_to_end(&mut rest).unwrap(), 0, "closed");

        // Closing one makes room again.
        drop(clients.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        while svc.connections() >= MAX_CONNECTIONS {
            assert!(
                Instant::now() < deadline,
                "the closed connection was not released"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut again = Client::connect(addr);
        assert_eq!(again.ask(b"again\n"), "again tick=1 mismatches=0\n");

        // Stopping closes the open connections: the clients see EOF.
        svc.stop();
        for mut cl in clients.into_iter().chain([again]) {
            let mut rest = Vec::new();
            assert_eq!(cl.reader.read_to_end(&mut rest).unwrap(), 0);
        }
        assert!(TcpStream::connect(addr).is_err(), "listener closed");
    }
}
