//! The network lab on real namespaces with real `ferry` daemons: topology, registration over
//! the management network, reachability (and isolation) of the segments, shaping measured
//! with TCP, a relay in the switch, and cleanup (orderly, and after the owner was killed).
//!
//! Needs root and a built `ferry` binary: `$FERRY_BIN`, else the newest of
//! `$CARGO_TARGET_DIR/debug/ferry` and the workspace's `target/debug/ferry`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_api::HostState;
use ferry_lab::netlab::{down, read_record, status, Liveness, ProcId, Which};
use ferry_lab::{NetLab, NetLabConfig, Shape};

fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "FERRY_BIN={} does not exist", p.display());
        return p;
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug/ferry"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ferry"));
    candidates
        .into_iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "no ferry binary found (looked in $CARGO_TARGET_DIR/debug and target/debug): \
                 build it with `cargo build -p ferry-cli`, or set FERRY_BIN"
            )
        })
}

fn config(hosts: &[&str]) -> NetLabConfig {
    let mut cfg = NetLabConfig::new(ferry_bin(), hosts);
    cfg.keep = std::env::var_os("FERRY_KEEP_LAB").is_some();
    cfg
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Listens in `ns` on `addr`:0.
fn listen_in(lab: &NetLab, ns: &str, addr: Ipv4Addr) -> TcpListener {
    lab.in_ns(ns, || TcpListener::bind((addr, 0)))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("listen on {addr} in {ns}: {e}"))
}

fn connect_in(lab: &NetLab, ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    lab.in_ns(ns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .expect("enter namespace")
}

/// Connects from `from_ns` to a listener in `to_ns` on `addr`, says hello both ways and
/// returns the address the listener saw the connection come from.
fn hello(lab: &NetLab, from_ns: &str, to_ns: &str, addr: Ipv4Addr) -> SocketAddr {
    let l = listen_in(lab, to_ns, addr);
    let to = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        s.write_all(b"olleh").unwrap();
        peer
    });
    let mut c = connect_in(lab, from_ns, to)
        .unwrap_or_else(|e| panic!("connect from {from_ns} to {to} in {to_ns}: {e}"));
    c.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"olleh");
    server.join().unwrap()
}

/// Sends as fast as TCP allows for `secs` from `from`'s namespace to a listener on `to`'s
/// migration address; returns the rate the receiver saw, bit/s.
fn throughput(lab: &NetLab, from: &str, to: &str, secs: f64) -> f64 {
    let l = listen_in(lab, lab.host_ns(to), lab.migration_ip(to));
    let addr = l.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        let (mut total, mut first, mut last) = (0u64, None, Instant::now());
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            total += n as u64;
        }
        let first = first.expect("some data");
        total as f64 * 8.0 / last.duration_since(first).as_secs_f64()
    });
    let mut s = connect_in(lab, lab.host_ns(from), addr).unwrap();
    let buf = vec![0x5au8; 256 << 10];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        s.write_all(&buf).unwrap();
    }
    drop(s);
    receiver.join().unwrap()
}

fn links_and_namespaces_of(slot: u8) -> Vec<String> {
    let prefix = format!("fy{slot}-");
    let mut found = Vec::new();
    for dir in ["/run/netns", "/sys/class/net"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    found.push(format!("{dir}/{name}"));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_host_lab_is_wired_shaped_relayed_and_removed() {
    let mut lab = NetLab::start(config(&["a", "b"]))
        .await
        .expect("the lab starts");
    let n = lab.slot();
    eprintln!("lab slot {n}, work dir {}", lab.dir().display());

    // The record says who owns what.
    let rec = read_record(n).expect("state file");
    assert_eq!(rec.owner, ProcId::me());
    assert!(!rec.detached);
    for ns in ["sw", "a", "b", "cl"] {
        assert!(rec.namespaces.contains(&format!("fy{n}-{ns}")), "{rec:?}");
        assert!(Path::new(&format!("/run/netns/fy{n}-{ns}")).exists());
    }
    assert_eq!(rec.root_links, vec![format!("fy{n}-m")]);
    assert_eq!(rec.daemons.len(), 3, "server and two agents");

    // Both agents registered over the management network, with their migration addresses.
    assert!(lab
        .server_url()
        .starts_with(&format!("https://172.29.{n}.254:")));
    let hosts = lab.client().hosts().await.expect("the server answers");
    for (i, name) in ["a", "b"].iter().enumerate() {
        let h = hosts
            .iter()
            .find(|h| h.name == *name)
            .expect("host registered");
        assert_eq!(h.state, HostState::Connected);
        let mgmt = format!("172.29.{n}.{}", 11 + i);
        assert!(h.url.starts_with(&format!("https://{mgmt}:")), "{}", h.url);
        assert_eq!(h.migration_address, format!("172.31.{n}.{}", 11 + i));
        assert_eq!(lab.migration_ip(name).to_string(), h.migration_address);
        assert_eq!(lab.mgmt_ip(name).to_string(), mgmt);
    }
    // The agents run inside their namespaces.
    for name in ["a", "b"] {
        let out = Command::new("ip")
            .args(["netns", "pids", lab.host_ns(name)])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "no process in {}",
            lab.host_ns(name)
        );
    }

    // exec_in sees the host's interfaces.
    let out = lab
        .exec_in(lab.host_ns("a"), "ip", &["-br", "addr"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "mgmt0",
        "mig0",
        "vmup0",
        "br-vm",
        &format!("172.31.{n}.11/24"),
    ] {
        assert!(text.contains(want), "{want} missing in host a:\n{text}");
    }

    // The client reaches each host's VM bridge (where VM taps go) over vmnet.
    // (Different addresses: the client's ARP cache would still send .200 to a's bridge.)
    for (i, name) in ["a", "b"].iter().enumerate() {
        let ns = lab.host_ns(name).to_string();
        let vm_ip = lab.vm_subnet_ip(200 + i as u8);
        let cidr = format!("{vm_ip}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "br-vm"]);
        let peer = hello(&lab, lab.client_ns(), &ns, vm_ip);
        ip(&["-n", &ns, "addr", "del", &cidr, "dev", "br-vm"]);
        assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.client_ip()));
    }
    // ... and nothing else: the migration and management networks are not on its segment.
    for to in [lab.migration_ip("a"), lab.mgmt_ip("a")] {
        let r = connect_in(&lab, lab.client_ns(), SocketAddr::from((to, 9)));
        assert!(r.is_err(), "the client reached {to}");
    }

    // The migration addresses reach each other, over mignet.
    let peer = hello(
        &lab,
        lab.host_ns("a"),
        lab.host_ns("b"),
        lab.migration_ip("b"),
    );
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.migration_ip("a")));
    let peer = hello(
        &lab,
        lab.host_ns("b"),
        lab.host_ns("a"),
        lab.migration_ip("a"),
    );
    assert_eq!(peer.ip(), std::net::IpAddr::V4(lab.migration_ip("b")));

    // Shaping, measured with TCP from a to b.
    let unshaped = throughput(&lab, "a", "b", 2.0);
    eprintln!("a -> b unshaped: {:.2} Gbit/s", unshaped / 1e9);
    lab.shape_migration("a", Shape::Mbit(100)).unwrap();
    let m100 = throughput(&lab, "a", "b", 3.0);
    eprintln!("a -> b shaped to 100 Mbit/s: {:.1} Mbit/s", m100 / 1e6);
    // The other direction is shaped too (the switch's port towards a).
    let m100_back = throughput(&lab, "b", "a", 2.0);
    eprintln!("b -> a shaped to 100 Mbit/s: {:.1} Mbit/s", m100_back / 1e6);
    lab.shape_migration("a", Shape::Gbit1).unwrap();
    let g1 = throughput(&lab, "a", "b", 2.0);
    eprintln!("a -> b shaped to 1 Gbit/s: {:.0} Mbit/s", g1 / 1e6);
    lab.shape_migration("a", Shape::Gbit10).unwrap();
    let g10 = throughput(&lab, "a", "b", 2.0);
    eprintln!("a -> b shaped to 10 Gbit/s: {:.2} Gbit/s", g10 / 1e9);
    lab.shape_migration("a", Shape::None).unwrap();
    lab.shape_migration("a", Shape::None).unwrap(); // idempotent
    let qdisc = lab
        .exec_in(lab.host_ns("a"), "tc", &["qdisc", "show", "dev", "mig0"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&qdisc.stdout).contains("tbf"));
    assert!(
        (75e6..=125e6).contains(&m100),
        "shaped to 100 Mbit/s, measured {:.1} Mbit/s",
        m100 / 1e6
    );
    assert!(
        (75e6..=125e6).contains(&m100_back),
        "shaped to 100 Mbit/s, measured {:.1} Mbit/s back",
        m100_back / 1e6
    );
    assert!(g1 <= 1.25e9, "shaped to 1 Gbit/s, measured {g1}");

    // A relay in the switch adds its delay each way: a -> relay (172.31.N.250) -> b.
    let echo = listen_in(&lab, lab.host_ns("b"), lab.migration_ip("b"));
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        }
    });
    let sw = lab.switch_ns().to_string();
    let relay = lab
        .start_relay(
            &sw,
            SocketAddr::from((lab.relay_ip(), 0)),
            echo_addr,
            20,
            None,
        )
        .expect("relay starts");
    assert_eq!(relay.addr.ip(), std::net::IpAddr::V4(lab.relay_ip()));
    let mut c = connect_in(&lab, lab.host_ns("a"), relay.addr).expect("reach the relay");
    c.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for i in 0..5u8 {
        let t = Instant::now();
        c.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i);
        rtts.push(t.elapsed());
    }
    rtts.sort();
    eprintln!("a -> relay(+20 ms) -> b round trips: {rtts:?}");
    assert!(rtts[0] >= Duration::from_millis(40), "{rtts:?}");
    assert!(rtts[2] < Duration::from_millis(80), "{rtts:?}");
    drop(c);

    // spawn_in: a process in the client namespace, killed on drop.
    let child = lab
        .spawn_in(lab.client_ns(), "sleep", &["60"])
        .expect("spawn");
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(200));
    assert!(lab.pids().contains(&pid), "spawned process not in the lab");
    drop(child);
    assert!(!ferry_qemu::process::pid_alive(pid));

    // Shutdown leaves nothing: no namespace, no link, no process, no directory.
    let child = lab.spawn_in(lab.host_ns("b"), "sleep", &["60"]).unwrap();
    std::mem::forget(child); // the lab must end it anyway
    let pids = lab.pids();
    assert!(pids.len() >= 4, "{pids:?}");
    let work = lab.dir().to_path_buf();
    lab.shutdown();
    assert_eq!(links_and_namespaces_of(n), Vec::<String>::new());
    let alive: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| ferry_qemu::process::pid_alive(*p))
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    assert!(!work.exists(), "{} left", work.display());
    assert!(!Path::new(&format!("/run/ferry-lab/{n}")).exists());
    drop(lab);
}

const HELPER_ENV: &str = "FERRY_NETLAB_CRASH_HELPER";

/// Run by the next test in a child process: starts a lab, says which slot, and waits to be
/// killed.
#[tokio::test]
#[ignore = "a helper: a_killed_owner_s_lab_is_removed_by_the_next_cleanup runs it"]
async fn crash_helper() {
    let Some(file) = std::env::var_os(HELPER_ENV) else {
        return;
    };
    let lab = NetLab::start(config(&["a"])).await.expect("lab starts");
    std::fs::write(&file, format!("{}\n", lab.slot())).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_s_lab_is_removed_by_the_next_cleanup() {
    // A lab owned by this (live) process: cleanup must leave it alone.
    let live = NetLab::start(config(&["a"])).await.expect("lab starts");
    let live_slot = live.slot();

    let tmp = tempfile::tempdir().unwrap();
    let slot_file = tmp.path().join("slot");
    let log = std::fs::File::create(tmp.path().join("helper.log")).unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["crash_helper", "--exact", "--ignored", "--nocapture"])
        .env(HELPER_ENV, &slot_file)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the helper starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let slot: u8 = loop {
        if let Some(s) = std::fs::read_to_string(&slot_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break s;
        }
        if let Ok(Some(st)) = helper.try_wait() {
            let log = std::fs::read_to_string(tmp.path().join("helper.log")).unwrap_or_default();
            panic!("the helper exited with {st} before its lab was up:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "the helper's lab did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let rec = read_record(slot).expect("the helper's record");
    assert_eq!(rec.owner.map(|o| o.pid), Some(helper.id()));

    // The owner dies without cleaning up (SIGKILL: no Drop).
    helper.kill().unwrap();
    helper.wait().unwrap();
    let daemons: Vec<u32> = rec.daemons.iter().map(|d| d.proc.pid).collect();
    assert!(
        daemons.iter().any(|p| ferry_qemu::process::pid_alive(*p)),
        "the helper's daemons should outlive it"
    );
    assert!(!links_and_namespaces_of(slot).is_empty());
    let st = status();
    let dead = st.iter().find(|s| s.slot == slot).expect("listed");
    assert_eq!(dead.liveness, Liveness::Dead);
    let mine = st.iter().find(|s| s.slot == live_slot).expect("listed");
    assert_eq!(mine.liveness, Liveness::Owned);

    // The next cleanup removes the dead lab and only that.
    down(Which::Dead).expect("cleanup");
    assert_eq!(links_and_namespaces_of(slot), Vec::<String>::new());
    assert!(!Path::new(&format!("/run/ferry-lab/{slot}")).exists());
    let work = rec.work_dir.expect("work dir recorded");
    assert!(!work.exists(), "{} left", work.display());
    let alive: Vec<u32> = daemons
        .iter()
        .copied()
        .filter(|p| ferry_qemu::process::pid_alive(*p))
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    assert!(Path::new(&format!("/run/netns/fy{live_slot}-a")).exists());
    assert!(live.client().hosts().await.is_ok(), "the live lab was hit");

    // A detached lab survives the default cleanup too; only an explicit one removes it.
    let rec = live.detach().expect("detach");
    assert!(rec.detached && rec.owner.is_none());
    down(Which::Dead).expect("cleanup");
    let st = status();
    let detached = st.iter().find(|s| s.slot == live_slot).expect("listed");
    assert_eq!(detached.liveness, Liveness::Detached);
    assert_eq!(detached.daemons_alive, 2);
    let removed = down(Which::Slot(live_slot)).expect("down --slot");
    assert_eq!(removed, vec![live_slot]);
    assert_eq!(links_and_namespaces_of(live_slot), Vec::<String>::new());
    assert!(!Path::new(&format!("/run/ferry-lab/{live_slot}")).exists());
}
