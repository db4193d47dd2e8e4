//! The `ferry bench` subcommands' options (kept apart from `cli.rs` so each stays short),
//! and how they become `ferry_bench`'s configs (also `ferry demo`'s).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_bench::{api, converge, demo, evacuate, faults, ha, migrate, net, placement, quick};
use ferry_bench::{storage, switchover, tls};

use crate::cli::{DemoArgs, JsonFlag};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Migrate one guest over loopback at several guest dirty rates; print a table and
    /// write bench/results/migrate-loopback.json.
    #[command(
        after_help = "Examples:\n  ferry bench migrate\n  ferry bench migrate --memory 1024 --workload-mem 768 --rates 200 --vs-qemu"
    )]
    Migrate(BenchMigrateArgs),
    /// What a client outside the VM sees: hosts in network namespaces, the migration network
    /// shaped to 1 Gbit/s, one TCP connection asking every 10 ms; then a 100 ms RTT link.
    /// Writes bench/results/network.json.
    Network(BenchNetworkArgs),
    /// A VM with its disk in a local pool moves over a 1 Gbit/s migration network, against
    /// a raw copy of the same image over the same link; the guest's disk write rate before
    /// and during the copy. Writes bench/results/storage.json.
    #[command(after_help = "Example:\n  ferry bench storage --disk-gib 4 --data-gib 2")]
    Storage(BenchStorageArgs),
    /// QEMU's defaults (as `virsh migrate --live` drives them) against Ferry's convergence
    /// controller, side by side, over a 1 Gbit/s migration network with the guest dirtying
    /// 0/25/75/150 % of the link rate. Writes bench/results/convergence.json and .svg.
    #[command(
        after_help = "Examples:\n  ferry bench convergence\n  ferry bench convergence --link-pcts 150 --time-limit 120"
    )]
    Convergence(BenchConvergenceArgs),
    /// The switch-over as a client sees it, in one run: QEMU's defaults, Ferry's previous
    /// policy (QEMU aimed at the budget, frames reaching the paused source lost) and Ferry
    /// now (the least pause, frames forwarded); a 1 GiB guest idle and dirtying 10 and
    /// 50 MiB/s over a 1 Gbit/s link; QEMU's pause, the pause's pieces, the client's
    /// longest and p99 gap and TCP retransmission timeouts, total time over bytes / link.
    /// Writes bench/results/switchover.json and .svg.
    #[command(
        after_help = "Examples:\n  ferry bench switchover\n  ferry bench switchover --rates 0 --arms ferry"
    )]
    Switchover(BenchSwitchoverArgs),
    /// The fault matrix on real daemons, QEMU and the guest: each migration phase x each
    /// fault (SIGKILL of the server, an agent or a QEMU; the destination pool full; the
    /// migration link cut), injected the moment the phase begins; checks that the
    /// migration settles, exactly one QEMU runs the VM, the guest verifies clean and
    /// nothing leaks. Writes bench/results/faults.json and faults.md.
    #[command(
        after_help = "Examples:\n  ferry bench faults\n  ferry bench faults --cells transferring:kill-dest-qemu,switching_over:kill-server"
    )]
    Faults(BenchFaultsArgs),
    /// Two guests migrated back and forth between two hosts, N rounds, with seeded random
    /// faults (the server or an agent SIGKILLed and restarted, during a migration at a
    /// random hold point or between migrations, or nothing); counts ok / failed cleanly /
    /// needs attention / lost, guest mismatches and leaked QEMUs, sockets, files and taps.
    /// Writes bench/results/soak.json.
    #[command(
        after_help = "Examples:\n  ferry bench soak --count 10\n  ferry bench soak --count 100 --seed 7"
    )]
    Soak(BenchSoakArgs),
    /// What TLS and authentication cost: p50/p99 of `ferry host list` and of GET
    /// /v1/hosts on a kept connection, against a secured cluster and an --insecure one.
    /// Writes bench/results/api-latency.json.
    #[command(after_help = "Example:\n  ferry bench api --samples 200")]
    Api(BenchApiArgs),
    /// What QEMU's TLS costs a migration: the same guest with 1 and 4 streams, secured vs
    /// --insecure, over loopback and a 1 Gbit/s migration network. Writes
    /// bench/results/tls.json. Needs root (the network lab).
    #[command(
        after_help = "Examples:\n  ferry bench tls\n  ferry bench tls --links loopback --streams 1"
    )]
    Tls(BenchTlsArgs),
    /// The placement function on a synthetic cluster (1,000 hosts, 20,000 VMs, 1,000
    /// rules): one placement, and a whole host's evacuation plan. Writes
    /// bench/results/placement.json.
    #[command(
        after_help = "Example:\n  ferry bench placement --hosts 1000 --vms 20000 --rules 1000"
    )]
    Placement(BenchPlacementArgs),
    /// A host with four 1 GiB guests (two dirtying memory) evacuated over 1 Gbit/s migration
    /// links to three other hosts (network namespaces): each guest moved alone (and back)
    /// against the whole evacuation, the dry run's estimate against the actual time (goal:
    /// within 20 %), and the link's utilisation; every guest must verify clean. Writes
    /// bench/results/evacuate.json and evacuate.txt. Needs root (the network lab).
    #[command(
        after_help = "Examples:\n  ferry bench evacuate\n  ferry bench evacuate --destinations 2 --dirty-rate 32 --link-mib-s 0"
    )]
    Evacuate(BenchEvacuateArgs),
    /// High availability on a three-host network lab: from a host's loss (its agent and
    /// QEMU killed; or its management link cut, so it fences itself) to its HA VM running
    /// on another host, with the server's timing (goal: under 30 s with the default lease);
    /// the lease, the margins, and the fencing margin as it happened. Writes
    /// bench/results/ha.json. Needs root (the network lab).
    #[command(after_help = "Examples:\n  ferry bench ha\n  ferry bench ha --lease-s 9")]
    Ha(BenchHaArgs),
    /// Quick vs live migration of one guest (1 GiB by default), back and forth: total time
    /// and downtime of each, the guest verified after every move. Writes
    /// bench/results/quick.json.
    #[command(
        after_help = "Examples:\n  ferry bench quick\n  ferry bench quick --rounds 3 --rate 50"
    )]
    Quick(BenchQuickArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchHaArgs {
    /// The server's `--ha-lease-s` (default: the server's default).
    #[arg(long, default_value_t = 15)]
    pub lease_s: u64,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BenchEvacuateArgs {
    /// Guests on the host evacuated.
    #[arg(long, default_value_t = 4)]
    pub vms: usize,
    /// How many of them rewrite memory (the others only verify theirs).
    #[arg(long, default_value_t = 2)]
    pub dirty_vms: usize,
    /// What the dirtying guests rewrite, MiB/s.
    #[arg(long, default_value_t = 16.0)]
    pub dirty_rate: f64,
    /// Each guest's memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// MiB each guest's workload fills with self-verifying pages.
    #[arg(long, default_value_t = 768)]
    pub workload_mem: u64,
    /// Hosts the guests may go to, besides the source (2 to 7).
    #[arg(long, default_value_t = 3)]
    pub destinations: usize,
    /// The link capacity every agent declares (`--migration-link-mib-s`; 1 Gbit/s is
    /// 119 MiB/s); 0 declares none, so the server uses what its probes measure.
    #[arg(long, default_value_t = 119)]
    pub link_mib_s: u64,
    /// Each migration, the evacuation and each guest's check may take this long, s.
    #[arg(long, default_value_t = 900)]
    pub time_limit: u64,
    /// Keep the lab's directory (daemon logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the result files.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchQuickArgs {
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// Memory the guest's workload fills with self-verifying pages (MiB).
    #[arg(long, default_value_t = 768)]
    pub workload_mem: u64,
    /// How fast the workload rewrites its pages (MiB/s).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Rounds; each is a quick move a -> b and a live move back b -> a.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Cap the live migration's stream (MiB/s); default: uncapped (loopback).
    #[arg(long)]
    pub max_bandwidth: Option<u64>,
    /// Channels that write and read the quick migration's state file (default: Ferry's, 2).
    #[arg(long)]
    pub streams: Option<u8>,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchPlacementArgs {
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    #[arg(long, default_value_t = 20_000)]
    pub vms: usize,
    #[arg(long, default_value_t = 1000)]
    pub rules: usize,
    /// Placement decisions to time.
    #[arg(long, default_value_t = 200)]
    pub placements: usize,
    /// Seed of the synthetic inventory.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BenchTlsArgs {
    /// Guest memory (MiB).
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// Memory the guest's workload fills with self-verifying pages (MiB).
    #[arg(long, default_value_t = 768)]
    pub workload_mem: u64,
    /// The workload's dirty rate (MiB/s).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stream counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub streams: Vec<u8>,
    /// Links: loopback, 1gbit.
    #[arg(long, value_delimiter = ',', default_value = "loopback,1gbit")]
    pub links: Vec<String>,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BenchApiArgs {
    /// Requests per arm.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct BenchSoakArgs {
    /// Rounds (one migration each).
    #[arg(long, default_value_t = 100)]
    pub count: u32,
    /// Seed of the fault sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The server's --recovery-bound-s.
    #[arg(long, default_value_t = 20)]
    pub recovery_bound: u64,
    /// Keep the lab's directory (daemon logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchFaultsArgs {
    /// Cells to run, POINT:FAULT (points: preparing, copying_disks, transferring,
    /// switching_over, post_copy; faults: kill-server, kill-source-agent, kill-dest-agent,
    /// kill-dest-qemu, kill-source-qemu, link-cut, dest-pool-full). Default: all.
    #[arg(long, value_delimiter = ',')]
    pub cells: Vec<String>,
    /// Cells run side by side (each on its own lab).
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// The server's --recovery-bound-s in every lab.
    #[arg(long, default_value_t = 20)]
    pub recovery_bound: u64,
    /// Keep every lab's directory (daemon logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the result files.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchConvergenceArgs {
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// MiB the guest workload rewrites.
    #[arg(long, default_value_t = 256)]
    pub workload_mem: u64,
    /// Guest dirty rates to run, percent of the 1 Gbit/s link.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 25.0, 75.0, 150.0])]
    pub link_pcts: Vec<f64>,
    /// Which arms to run: qemu-defaults, ferry (throttle up to 99 %, then post-copy),
    /// ferry-postcopy (post-copy as soon as pre-copy is seen not to converge).
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::converge::MODES.map(String::from).to_vec(),
          value_parser = ferry_bench::converge::MODES)]
    pub modes: Vec<String>,
    /// Downtime budget, ms (QEMU's default downtime limit, for all).
    #[arg(long, default_value_t = 300)]
    pub downtime_limit: u64,
    /// A run not finished after this long counts as not converging (and is cancelled), s.
    #[arg(long, default_value_t = 600)]
    pub time_limit: u64,
    /// Where to write the result files.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchStorageArgs {
    /// Virtual size of the VM's disk, GiB.
    #[arg(long, default_value_t = 4)]
    pub disk_gib: u64,
    /// GiB of data on it.
    #[arg(long, default_value_t = 2)]
    pub data_gib: u64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// How fast the guest rewrites its disk area, MiB/s.
    #[arg(long, default_value_t = 20.0)]
    pub guest_write_rate: f64,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchNetworkArgs {
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// MiB the guest workload fills.
    #[arg(long, default_value_t = 768)]
    pub workload_mem: u64,
    /// Guest dirty rates to run over the 1 Gbit/s link, MiB/s (0 = idle).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 50.0])]
    pub rates: Vec<f64>,
    /// Guest dirty rate for the 100 ms RTT run, MiB/s.
    #[arg(long, default_value_t = 10.0)]
    pub rtt_rate: f64,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct BenchMigrateArgs {
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// MiB the guest workload fills.
    #[arg(long, default_value_t = 768)]
    pub workload_mem: u64,
    /// Guest dirty rates to run, MiB/s.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 10.0, 50.0])]
    pub rates: Vec<f64>,
    /// Also move the same guest at each rate with QEMU alone, uncapped (what a user gets
    /// from QEMU by hand), for comparison.
    #[arg(long)]
    pub vs_qemu: bool,
    /// Where to write the result file.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

impl From<BenchMigrateArgs> for migrate::MigrateConfig {
    fn from(a: BenchMigrateArgs) -> Self {
        migrate::MigrateConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            rates: a.rates,
            vs_qemu: a.vs_qemu,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchNetworkArgs> for net::NetworkConfig {
    fn from(a: BenchNetworkArgs) -> Self {
        net::NetworkConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            rates: a.rates,
            rtt_rate: a.rtt_rate,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchStorageArgs> for storage::StorageConfig {
    fn from(a: BenchStorageArgs) -> Self {
        storage::StorageConfig {
            disk_gib: a.disk_gib,
            data_gib: a.data_gib,
            memory: a.memory,
            guest_write_rate: a.guest_write_rate,
            out: a.out,
            json: a.json.json,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchSwitchoverArgs {
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// MiB the guest workload rewrites.
    #[arg(long, default_value_t = 256)]
    pub workload_mem: u64,
    /// Guest dirty rates, MiB/s (0: idle).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 10.0, 50.0])]
    pub rates: Vec<f64>,
    /// Which arms to run: qemu-defaults, ferry-previous, ferry.
    #[arg(long, value_delimiter = ',', default_values_t = ferry_bench::switchover::ARMS.map(String::from).to_vec(),
          value_parser = ferry_bench::switchover::ARMS)]
    pub arms: Vec<String>,
    /// Downtime budget, ms (QEMU's default downtime limit, for all).
    #[arg(long, default_value_t = 300)]
    pub downtime_limit: u64,
    /// MTU of the lab's migration network (9000: jumbo frames, as a dedicated migration
    /// network is usually run; 1500: TCP headers take 4.4 % of the link).
    #[arg(long, default_value_t = 9000, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub migration_mtu: u16,
    /// Runs of every (load, arm) cell, interleaved; goals and the plot use each cell's
    /// median (one run's figures vary by a few per cent on a shared machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub repeat: u32,
    /// Where to write the result files.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub json: JsonFlag,
}

impl From<BenchSwitchoverArgs> for switchover::SwitchoverConfig {
    fn from(a: BenchSwitchoverArgs) -> Self {
        switchover::SwitchoverConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            rates: a.rates,
            arms: a.arms,
            downtime_limit: a.downtime_limit,
            migration_mtu: a.migration_mtu,
            repeat: a.repeat,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchConvergenceArgs> for converge::ConvergenceConfig {
    fn from(a: BenchConvergenceArgs) -> Self {
        converge::ConvergenceConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            link_pcts: a.link_pcts,
            modes: a.modes,
            downtime_limit: a.downtime_limit,
            time_limit: a.time_limit,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchFaultsArgs> for faults::FaultsConfig {
    fn from(a: BenchFaultsArgs) -> Self {
        faults::FaultsConfig {
            cells: a.cells,
            parallel: a.parallel,
            recovery_bound: a.recovery_bound,
            keep: a.keep,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchSoakArgs> for faults::SoakConfig {
    fn from(a: BenchSoakArgs) -> Self {
        faults::SoakConfig {
            count: a.count,
            seed: a.seed,
            recovery_bound: a.recovery_bound,
            keep: a.keep,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchApiArgs> for api::ApiConfig {
    fn from(a: BenchApiArgs) -> Self {
        api::ApiConfig {
            samples: a.samples,
            out: a.out,
        }
    }
}

impl From<BenchTlsArgs> for tls::TlsConfig {
    fn from(a: BenchTlsArgs) -> Self {
        tls::TlsConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            rate: a.rate,
            streams: a.streams,
            links: a.links,
            out: a.out,
        }
    }
}

impl From<BenchPlacementArgs> for placement::PlacementConfig {
    fn from(a: BenchPlacementArgs) -> Self {
        placement::PlacementConfig {
            hosts: a.hosts,
            vms: a.vms,
            rules: a.rules,
            placements: a.placements,
            seed: a.seed,
            out: a.out,
        }
    }
}

impl From<BenchHaArgs> for ha::HaConfig {
    fn from(a: BenchHaArgs) -> Self {
        ha::HaConfig {
            lease_s: a.lease_s,
            out: a.out,
        }
    }
}

impl From<BenchEvacuateArgs> for evacuate::EvacuateConfig {
    fn from(a: BenchEvacuateArgs) -> Self {
        evacuate::EvacuateConfig {
            vms: a.vms,
            dirty_vms: a.dirty_vms,
            dirty_rate: a.dirty_rate,
            memory: a.memory,
            workload_mem: a.workload_mem,
            destinations: a.destinations,
            link_mib_s: a.link_mib_s,
            time_limit: a.time_limit,
            keep: a.keep,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<BenchQuickArgs> for quick::QuickConfig {
    fn from(a: BenchQuickArgs) -> Self {
        quick::QuickConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            rate: a.rate,
            rounds: a.rounds,
            max_bandwidth: a.max_bandwidth,
            streams: a.streams,
            out: a.out,
            json: a.json.json,
        }
    }
}

impl From<DemoArgs> for demo::DemoConfig {
    fn from(a: DemoArgs) -> Self {
        demo::DemoConfig {
            memory: a.memory,
            workload_mem: a.workload_mem,
            workload_rate: a.workload_rate,
            keep: a.keep,
            json: a.json.json,
        }
    }
}
