//! A TCP relay that emulates a long-distance link: every byte is delayed by a fixed time
//! each way (so a round trip takes 2 x delay longer), optionally at a capped rate.
//! `netem` is not available on the machines Ferry is tested on; this is its user-space
//! stand-in for TCP (which is all a migration stream is).
//!
//! For each accepted connection the relay connects to the target and forwards both
//! directions independently. A direction keeps *reading* continuously, stamping each chunk
//! with its arrival time and queueing it; its writer sends each chunk when `arrival + delay`
//! has come (and the rate limit allows). So throughput is not limited to one window per
//! delay: the sender's TCP sees a short local round trip to the relay, the data is in
//! flight inside the relay. What bounds it is the queue cap (`max_queued_bytes` per
//! direction and connection, 64 MiB by default): when the queue is full the relay stops
//! reading until the writer catches up (TCP backpressure to the sender), so memory is
//! bounded and the most a direction can carry is `max_queued_bytes / delay` (1.3 GB/s at
//! 50 ms).
//!
//! End of stream: an EOF (or a read error) on one side is passed on, after the delay, as a
//! shutdown of the write side towards the other (half-close). A failed write ends that
//! direction; the connection ends when both directions have.
//!
//! The optional rate limit is a token bucket shared by all connections of a direction
//! (like a link's bandwidth), with a burst of 10 ms at the rate (at least 128 KiB).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// Default cap of bytes queued per direction and connection.
pub const DEFAULT_MAX_QUEUED: usize = 64 << 20;
/// Largest single read.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where each accepted connection is forwarded.
    pub to: SocketAddr,
    /// Added to every byte, each way.
    pub delay: Duration,
    /// Cap per direction (all connections together), bytes per second.
    pub rate_bytes_s: Option<u64>,
    /// Cap of bytes in flight inside the relay per direction and connection.
    pub max_queued_bytes: usize,
}

impl RelayConfig {
    pub fn new(to: SocketAddr, delay: Duration) -> RelayConfig {
        RelayConfig {
            to,
            delay,
            rate_bytes_s: None,
            max_queued_bytes: DEFAULT_MAX_QUEUED,
        }
    }

    /// Caps each direction at `mbit` megabits (10^6 bits) per second.
    pub fn with_rate_mbit(mut self, mbit: u32) -> RelayConfig {
        self.rate_bytes_s = Some(u64::from(mbit.max(1)) * 1_000_000 / 8);
        self
    }
}

/// Counters of a relay (all connections).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes written to the target (client -> target).
    pub bytes_to_target: AtomicU64,
    /// Bytes written back to clients (target -> client).
    pub bytes_from_target: AtomicU64,
    /// Bytes read but not yet written, all connections and directions.
    pub queued: AtomicU64,
    /// Connections whose connect to the target failed.
    pub connect_failures: AtomicU64,
}

/// A token bucket as a "theoretical arrival time" (GCRA): each chunk advances it by its
/// transmission time at the rate; a chunk may go when that time, minus the burst allowance,
/// has come.
#[derive(Debug)]
struct RateLimiter {
    bytes_s: f64,
    burst: Duration,
    tat: Mutex<Instant>,
}

impl RateLimiter {
    fn new(bytes_s: u64) -> RateLimiter {
        let bytes_s = bytes_s.max(1) as f64;
        let burst_bytes = (bytes_s / 100.0).max(2.0 * CHUNK as f64);
        RateLimiter {
            bytes_s,
            burst: Duration::from_secs_f64(burst_bytes / bytes_s),
            tat: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, n: usize) {
        let go_at = {
            let mut tat = match self.tat.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let next = (*tat).max(now) + Duration::from_secs_f64(n as f64 / self.bytes_s);
            *tat = next;
            next.checked_sub(self.burst)
        };
        if let Some(t) = go_at {
            sleep_until(t).await;
        }
    }
}

/// Accepts connections on `listener` and relays each to `cfg.to` until `shutdown`
/// completes; then every connection is dropped.
pub async fn serve(
    listener: TcpListener,
    cfg: RelayConfig,
    stats: Arc<RelayStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let cfg = Arc::new(cfg);
    let up = cfg.rate_bytes_s.map(|r| Arc::new(RateLimiter::new(r)));
    let down = cfg.rate_bytes_s.map(|r| Arc::new(RateLimiter::new(r)));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(stream, peer, cfg.clone(), up.clone(), down.clone(), stats.clone()));
                }
                Err(e) => {
                    // Out of descriptors, or an aborted handshake: keep serving.
                    tracing::warn!("relay: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

async fn connection(
    inbound: TcpStream,
    peer: SocketAddr,
    cfg: Arc<RelayConfig>,
    up: Option<Arc<RateLimiter>>,
    down: Option<Arc<RateLimiter>>,
    stats: Arc<RelayStats>,
) {
    let outbound =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(cfg.to)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!("relay: {peer}: cannot connect to {}: {e}", cfg.to);
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                tracing::warn!("relay: {peer}: connecting to {} timed out", cfg.to);
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let (in_rd, in_wr) = inbound.into_split();
    let (out_rd, out_wr) = outbound.into_split();
    let there = Pipe {
        delay: cfg.delay,
        limiter: up,
        cap: cfg.max_queued_bytes,
        written: &stats.bytes_to_target,
        queued: &stats.queued,
    };
    let back = Pipe {
        delay: cfg.delay,
        limiter: down,
        cap: cfg.max_queued_bytes,
        written: &stats.bytes_from_target,
        queued: &stats.queued,
    };
    let (a, b) = tokio::join!(there.run(in_rd, out_wr), back.run(out_rd, in_wr));
    if let Err(e) = a.and(b) {
        tracing::debug!("relay: {peer}: {e}");
    }
    stats.active.fetch_sub(1, Ordering::Relaxed);
}

enum Item {
    Data(Instant, Vec<u8>),
    Eof(Instant),
}

/// One direction of a connection.
struct Pipe<'a> {
    delay: Duration,
    limiter: Option<Arc<RateLimiter>>,
    cap: usize,
    written: &'a AtomicU64,
    queued: &'a AtomicU64,
}

impl Pipe<'_> {
    async fn run<R, W>(self, mut rd: R, mut wr: W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // Bytes that may be read ahead of the writer: a read needs CHUNK permits; what it
        // did not use is returned at once, the rest when written.
        let budget = Semaphore::new(self.cap.max(CHUNK));
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let queued = self.queued;
        let budget = &budget;
        // The reader owns the sender: when it ends, the writer drains the queue and ends.
        let reader = async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match budget.acquire_many(CHUNK as u32).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                let r = rd.read(&mut buf).await;
                let at = Instant::now();
                match r {
                    Ok(n) if n > 0 => {
                        budget.add_permits(CHUNK - n);
                        queued.fetch_add(n as u64, Ordering::Relaxed);
                        if tx.send(Item::Data(at, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    end => {
                        if let Err(e) = end {
                            tracing::debug!("relay: read: {e}");
                        }
                        budget.add_permits(CHUNK);
                        let _ = tx.send(Item::Eof(at));
                        return;
                    }
                }
            }
        };
        let writer = async {
            let mut result = Ok(());
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Data(at, data) => {
                        sleep_until(at + self.delay).await;
                        if let Some(l) = &self.limiter {
                            l.take(data.len()).await;
                        }
                        let n = data.len();
                        let w = wr.write_all(&data).await;
                        queued.fetch_sub(n as u64, Ordering::Relaxed);
                        budget.add_permits(n);
                        if let Err(e) = w {
                            result = Err(e);
                            break;
                        }
                        self.written.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Item::Eof(at) => {
                        sleep_until(at + self.delay).await;
                        result = wr.shutdown().await;
                        break;
                    }
                }
            }
            // Whatever is still queued is dropped with the connection.
            rx.close();
            while let Ok(item) = rx.try_recv() {
                if let Item::Data(_, data) = item {
                    queued.fetch_sub(data.len() as u64, Ordering::Relaxed);
                }
            }
            result
        };
        tokio::pin!(reader, writer);
        let mut reading = true;
        loop {
            tokio::select! {
                _ = &mut reader, if reading => reading = false,
                r = &mut writer => return r,
            }
        }
    }
}

/// A relay running on the current tokio runtime. Dropping it stops it.
pub struct Relay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Relay {
    /// Listens on `listen` (port 0: any) and relays to `cfg.to`.
    pub async fn start(listen: SocketAddr, cfg: RelayConfig) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, cfg, stats.clone(), async move {
            let _ = stopped.await;
        }));
        Ok(Relay {
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Stops accepting and drops every connection.
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    /// FNV-1a over a byte stream.
    #[derive(Clone, Copy)]
    struct Fnv(u64);
    impl Fnv {
        fn new() -> Fnv {
            Fnv(0xcbf2_9ce4_8422_2325)
        }
        fn update(&mut self, data: &[u8]) {
            for b in data {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_twice_the_delay() {
        let target = echo_server().await;
        let delay = Duration::from_millis(25);
        let relay = Relay::start(loopback(), RelayConfig::new(target, delay))
            .await
            .unwrap();
        let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        for i in 0..10u8 {
            let t = StdInstant::now();
            s.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            rtts.push(t.elapsed());
            assert_eq!(b[0], i);
        }
        rtts.sort();
        let (min, median) = (rtts[0], rtts[rtts.len() / 2]);
        eprintln!("relay +25 ms each way: RTT min {min:?}, median {median:?}");
        assert!(min >= 2 * delay, "RTT {min:?} below 2 x {delay:?}");
        assert!(
            median < 2 * delay + Duration::from_millis(15),
            "RTT {median:?} far above 2 x {delay:?}"
        );
        assert_eq!(relay.stats().connections.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_data_arrives_intact_and_eof_propagates() {
        const TOTAL: usize = 64 << 20;
        let delay = Duration::from_millis(50);
        // Pseudo-random data, made and hashed before the clock starts.
        let mut data = vec![0u8; TOTAL];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for c in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let mut h = Fnv::new();
        h.update(&data);
        // The sink reads until EOF, then answers with the length and hash and closes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::with_capacity(TOTAL);
            let mut buf = vec![0u8; 1 << 16];
            let mut first = None;
            loop {
                let k = s.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                first.get_or_insert_with(StdInstant::now);
                got.extend_from_slice(&buf[..k]);
            }
            let eof_at = StdInstant::now();
            let mut h = Fnv::new();
            h.update(&got);
            s.write_all(&(got.len() as u64).to_le_bytes())
                .await
                .unwrap();
            s.write_all(&h.0.to_le_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            (first.unwrap(), eof_at)
        });
        let relay = Relay::start(loopback(), RelayConfig::new(target, delay))
            .await
            .unwrap();
        let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
        let start = StdInstant::now();
        s.write_all(&data).await.unwrap();
        let eof_sent = StdInstant::now();
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let (first, eof_seen) = sink.await.unwrap();
        assert_eq!(answer.len(), 16, "answer then EOF");
        let n = u64::from_le_bytes(answer[..8].try_into().unwrap());
        let hash = u64::from_le_bytes(answer[8..].try_into().unwrap());
        assert_eq!(n, TOTAL as u64);
        assert_eq!(hash, h.0, "the data arrived changed");
        assert!(
            eof_seen.duration_since(eof_sent) >= delay,
            "EOF arrived before the delay"
        );
        assert!(first.duration_since(start) >= delay);
        let took = eof_seen.duration_since(start);
        let mib_s = TOTAL as f64 / (1 << 20) as f64 / took.as_secs_f64();
        eprintln!(
            "relay +50 ms each way: 64 MiB in {took:?} = {mib_s:.0} MiB/s ({:.2} Gbit/s)",
            mib_s * 8.0 * 1.048_576 / 1000.0
        );
        // One 4 MiB window per 100 ms round trip would be 40 MiB/s at most.
        assert!(
            mib_s > 60.0,
            "{mib_s:.0} MiB/s: the delay limits throughput"
        );
        assert_eq!(relay.stats().queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rate_limit_caps_throughput() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            buf.len()
        });
        let cfg = RelayConfig::new(target, Duration::from_millis(5)).with_rate_mbit(40);
        let relay = Relay::start(loopback(), cfg).await.unwrap();
        let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
        let total = 10_000_000usize;
        let start = StdInstant::now();
        s.write_all(&vec![7u8; total]).await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(sink.await.unwrap(), total);
        let secs = start.elapsed().as_secs_f64();
        let mbit = total as f64 * 8.0 / 1e6 / secs;
        eprintln!("relay capped at 40 Mbit/s: {mbit:.1} Mbit/s");
        assert!((32.0..=44.0).contains(&mbit), "{mbit:.1} Mbit/s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_reader_bounds_what_the_relay_holds() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        // Accepts and never reads.
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut cfg = RelayConfig::new(target, Duration::from_millis(1));
        cfg.max_queued_bytes = 1 << 20;
        let relay = Relay::start(loopback(), cfg).await.unwrap();
        let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
        let chunk = vec![1u8; 1 << 20];
        // The writer blocks once the kernel buffers and the relay's queue are full.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                s.write_all(&chunk).await.unwrap();
            }
        })
        .await;
        let q = relay.stats().queued.load(Ordering::Relaxed);
        assert!(q <= (1 << 20) as u64, "relay holds {q} bytes");
        assert!(q > 0, "nothing queued: the test did not fill the relay");
        drop(s);
        relay.stop().await;
        hold.abort();
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_the_client() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        drop(l);
        let relay = Relay::start(loopback(), RelayConfig::new(target, Duration::ZERO))
            .await
            .unwrap();
        let mut s = TcpStream::connect(relay.local_addr()).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        assert_eq!(relay.stats().connect_failures.load(Ordering::Relaxed), 1);
    }
}
