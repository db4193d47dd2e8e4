//! Command-line options. Parsed by clap, then turned into validated configs by the commands.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::cli_bench::*;

pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7700";

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Live-migrate running KVM/QEMU virtual machines between hosts",
    long_about = "Live-migrate running KVM/QEMU virtual machines between hosts.\n\n\
        A `ferry server` (control plane) drives one `ferry agent` per host. Operators and scripts \
        use the other subcommands, which talk to the server over HTTP.",
    after_help = "Examples:\n  \
        ferry demo                                  # a server, two agents, a VM moved A -> B -> A\n  \
        ferry host list\n  \
        ferry vm create web1 --host a --memory 512\n  \
        ferry vm migrate web1 --to b\n  \
        ferry events --vm web1 --json\n  \
        ferry schedule add sunday-a --cron \"0 2 * * SUN\" --maintenance-enter a\n  \
        ferry events verify --key PUBLIC_KEY_HEX    # check the audit trail\n\n\
        Connection: --server, --ca and --token (or FERRY_SERVER, FERRY_CA, FERRY_TOKEN), else \
        the file --config / FERRY_CONFIG / ~/.config/ferry/config.toml:\n  \
        server = \"https://10.0.0.1:7700\"\n  \
        ca = \"/etc/ferry/ca.crt\"\n  \
        token = \"ferry-api1....\"\n\n\
        Exit status: 0 success, 1 the operation failed, 2 bad input or refused request, \
        3 the server could not be reached, 4 a migration needs attention, 5 not authenticated \
        or not allowed."
)]
pub struct Cli {
    /// The Ferry server's URL [default: from the config file, else https://127.0.0.1:7700].
    #[arg(long, global = true, env = "FERRY_SERVER")]
    pub server: Option<String>,
    /// The cluster CA certificate to trust (PEM file; `ferry ca init` writes it).
    #[arg(long, global = true, env = "FERRY_CA")]
    pub ca: Option<PathBuf>,
    /// Your API token (`ferry user token`). Prefer FERRY_TOKEN or the config file: a
    /// flag shows in the process list.
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The client config file [default: ~/.config/ferry/config.toml].
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control-plane server.
    Server(ServerArgs),
    /// The cluster CA: made once on the server (`ferry ca init`), then shown.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Operator accounts, their roles and API tokens (admin).
    #[command(subcommand)]
    User(UserCmd),
    /// How the server sees you (your user and role).
    Whoami(JsonFlag),
    /// Placement rules: affinity, anti-affinity, VM-to-host; each must or should.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Run the per-host agent.
    Agent(Box<AgentArgs>),
    /// Registered hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Cluster-wide settings: the CPU baseline new VMs get, migration defaults and limits,
    /// load balancing.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Migrations (started with `ferry vm migrate`).
    #[command(subcommand)]
    Migration(MigrationCmd),
    /// Operations: evacuations (`ferry host maintenance enter`) and scheduled runs, each
    /// with an id and its story in the event log (`ferry events --operation ID`).
    #[command(subcommand)]
    Operation(crate::cmd_maintenance::OperationCmd),
    /// Scheduled operations: a migration, a maintenance entry or exit, or a balancing run,
    /// at a time or on a cron expression (UTC).
    #[command(subcommand)]
    Schedule(crate::cmd_schedule::ScheduleCmd),
    /// The balancer's recommendations (`ferry cluster balance --mode recommend`).
    #[command(subcommand)]
    Recommendation(crate::cmd_balance::RecommendationCmd),
    /// The event log: who asked what, when, with what outcome.
    Events(EventsArgs),
    /// Disk images in the hosts' storage pools.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Guest images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Start a server and two agents on loopback, boot the test guest on A, migrate it
    /// A -> B -> A while it dirties memory, and print the reports and the guest's verdict.
    Demo(DemoArgs),
    /// Benchmarks (print tables, write result files).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Network test lab: hosts as network namespaces on this machine; the delaying relay.
    #[command(subcommand)]
    Lab(crate::cmd_lab::LabCmd),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  ferry server --listen 0.0.0.0:7700 --data-dir /var/lib/ferry/server"
)]
pub struct ServerArgs {
    /// Address to serve the API on (port 0 picks a free port; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Where the SQLite database lives.
    #[arg(long, default_value = "/var/lib/ferry/server")]
    pub data_dir: PathBuf,
    /// A host whose agent has not reported for this long is disconnected (ms).
    #[arg(long, default_value_t = 10_000)]
    pub host_timeout_ms: u64,
    /// HA: the lease each heartbeat grants (s). An isolated host stops its HA VMs a third
    /// of it before it ends; the server restarts them elsewhere once it has ended plus a
    /// grace (a fifth), if most of the host's peers cannot reach it either.
    #[arg(long, default_value_t = 15)]
    pub ha_lease_s: u64,
    /// How often running migrations are polled (ms).
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
    /// When an interrupted migration's facts cannot be had (an agent does not answer),
    /// recovery asks again for this long, then marks it needs_attention (s).
    #[arg(long, default_value_t = 90)]
    pub recovery_bound_s: u64,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Run without TLS or authentication: anyone who reaches the port controls the
    /// cluster. For development on one machine only.
    #[arg(long)]
    pub insecure: bool,
    /// How long host certificates live (s); agents renew at two thirds.
    #[arg(long, default_value_t = 30 * 86_400)]
    pub host_cert_validity_s: u64,
    /// Fault tests: hold migrations at these points (preparing, copying_disks,
    /// transferring, switching_over, post_copy) until a file in --test-hold-dir goes.
    #[arg(long, value_delimiter = ',', requires = "test_hold_dir", hide = true)]
    pub test_hold_at: Vec<String>,
    /// Fault tests: where held migrations write `<id>.<point>`.
    #[arg(long, requires = "test_hold_at", hide = true)]
    pub test_hold_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  ferry agent --name a --server http://10.0.0.1:7700 --listen 10.0.0.5:7701 \\\n      --migration-address 10.1.0.5"
)]
pub struct AgentArgs {
    /// This host's name in the cluster.
    #[arg(long)]
    pub name: String,
    /// Address to serve the agent API on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub listen: SocketAddr,
    /// URL the server uses to reach this agent (default: http://<bound address>).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// Where VM records, QMP sockets and consoles live.
    #[arg(long, default_value = "/var/lib/ferry/agent")]
    pub state_dir: PathBuf,
    /// Guest image cache (default: $FERRY_CACHE_DIR/images, /var/cache/ferry/images as root).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// This host's address on the migration network; incoming streams listen there.
    #[arg(long, default_value = "127.0.0.1")]
    pub migration_address: IpAddr,
    /// Address other hosts use to reach --migration-address (NAT, relay); default: the same.
    #[arg(long)]
    pub migration_advertise: Option<IpAddr>,
    /// Fixed port for incoming migration streams (0: any free port); the pre-migration
    /// probe uses it too, and a storage copy's disk export uses the next port (P+1), so a
    /// NAT or relay must forward both.
    #[arg(long, default_value_t = 0)]
    pub migration_port: u16,
    /// A network VMs can attach to, and the host bridge it maps to (repeatable),
    /// e.g. --network vmnet=br-vm.
    #[arg(long = "network", value_name = "NAME=BRIDGE")]
    pub networks: Vec<String>,
    /// A storage pool: a directory of qcow2 images (repeatable). `:shared` marks storage
    /// every host of the pool sees at the same path (NFS, cluster FS),
    /// e.g. --pool local=/var/lib/ferry/pools/local --pool san=/mnt/san:shared.
    #[arg(long = "pool", value_name = "NAME=DIR[:shared]")]
    pub pools: Vec<String>,
    /// Heartbeat interval (ms).
    #[arg(long, default_value_t = 2_000)]
    pub heartbeat_ms: u64,
    /// Memory the host keeps for itself and never gives to VMs (MiB).
    #[arg(long, default_value_t = ferry_agent::config::DEFAULT_MEMORY_RESERVE_MIB)]
    pub memory_reserve_mib: u64,
    /// vCPUs allowed per host CPU (more than 0, at most 64).
    #[arg(long, default_value_t = ferry_agent::config::DEFAULT_VCPU_OVERCOMMIT)]
    pub vcpu_overcommit: f64,
    /// The migration link's capacity (MiB/s), shared fairly among the migrations using it
    /// and used for evacuation estimates; default: what the server's probes measure.
    #[arg(long)]
    pub migration_link_mib_s: Option<u64>,
    /// Offer only these CPU models (comma-separated), e.g. the ones this host is certified
    /// for; default: every model its QEMU can run.
    #[arg(long, value_delimiter = ',', value_name = "MODEL,...")]
    pub cpu_models: Option<Vec<String>>,
    /// A directory VMs may boot kernels, initrds and disks from by path (repeatable); the
    /// image cache and the pools are always allowed, any other host path is refused,
    /// e.g. --boot-path-allow /srv/ferry/boot.
    #[arg(long = "boot-path-allow", value_name = "DIR")]
    pub boot_path_allow: Vec<PathBuf>,
    /// Give every VM a second QMP socket (<state dir>/vms/<vm>/qmp-aux.sock) for your own
    /// tools; what they do there bypasses Ferry (`ferry bench convergence` drives QEMU's
    /// defaults through it).
    #[arg(long)]
    pub aux_qmp: bool,
    /// Run without registering with the server (`--server` is ignored).
    #[arg(long)]
    pub standalone: bool,
    /// Join the cluster with this token (`ferry host join-token NAME` on the server): the
    /// agent gets its host certificate and keeps it in <state dir>/tls. Needed once.
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Run without TLS or authentication (plain HTTP; anyone who reaches the port
    /// controls this host's VMs). For development on one machine only.
    #[arg(long, conflicts_with = "join")]
    pub insecure: bool,
    /// Run QEMU as this unprivileged user: it opens /dev/kvm, taps, disks and sockets as
    /// root, then drops to the user (post-copy then needs /dev/userfaultfd usable by it),
    /// e.g. --qemu-user ferry-qemu.
    #[arg(long, value_name = "USER")]
    pub qemu_user: Option<String>,
    /// Write the bound address to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(Args, Debug, Default, Clone, Copy)]
pub struct JsonFlag {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Make the cluster CA, the server's certificate and the first admin (run once, on
    /// the server's machine, before the first `ferry server`).
    #[command(
        after_help = "Example:\n  ferry ca init --data-dir /var/lib/ferry/server --write-config ~/.config/ferry/config.toml\n  \
        ferry server --data-dir /var/lib/ferry/server --listen 0.0.0.0:7700"
    )]
    Init {
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/ferry/server")]
        data_dir: PathBuf,
        /// The first admin's user name.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Also write a client config (server URL, CA path, the admin's token; 0600) here.
        #[arg(long)]
        write_config: Option<PathBuf>,
        /// The server URL to put in that config.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server_url: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The CA certificate(s) the server trusts, with their SHA-256.
    Show(JsonFlag),
    /// Replace the cluster CA with an overlap (admin). Without --finish: a new CA signs
    /// from now on and both are trusted; every agent picks up the new CA at its next
    /// heartbeats and renews its certificate. With --finish (once no host is pending): the
    /// server takes a certificate from the new CA and the old one is no longer trusted.
    #[command(
        after_help = "Examples:\n  ferry ca rotate              # start: prints the hosts still pending\n  \
        ferry ca rotate --status     # where it stands\n  \
        ferry ca rotate --finish     # once no host is pending"
    )]
    Rotate {
        /// End the overlap (refused while a host holds only old certificates).
        #[arg(long, conflicts_with = "status")]
        finish: bool,
        /// Only show where a rotation stands.
        #[arg(long)]
        status: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand, Debug)]
pub enum RuleCmd {
    /// Add a rule. Exactly one of --affinity, --anti-affinity, --on-hosts, --off-hosts.
    #[command(
        after_help = "Examples:\n  ferry rule add dbs-apart --anti-affinity --vms db1,db2\n  \
        ferry rule add web-with-cache --affinity --vms web1,cache1 --should\n  \
        ferry rule add licensed --vms db1,db2 --on-hosts a,b"
    )]
    Add {
        name: String,
        /// The VMs the rule is about.
        #[arg(long, value_delimiter = ',', required = true)]
        vms: Vec<String>,
        /// Keep the VMs on one host.
        #[arg(long, group = "kind")]
        affinity: bool,
        /// Keep the VMs on different hosts.
        #[arg(long, group = "kind")]
        anti_affinity: bool,
        /// Run the VMs only on these hosts.
        #[arg(long, value_delimiter = ',', group = "kind")]
        on_hosts: Vec<String>,
        /// Never run the VMs on these hosts.
        #[arg(long, value_delimiter = ',', group = "kind")]
        off_hosts: Vec<String>,
        /// A preference placement may break (it costs score) instead of a must.
        #[arg(long)]
        should: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the rules.
    List(JsonFlag),
    /// Delete a rule.
    Delete {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user with a role (viewer: read; operator: VMs and migrations; admin: hosts,
    /// cluster settings, users) and print its first API token (shown once).
    #[command(after_help = "Example:\n  ferry user add alice --role operator")]
    Add {
        name: String,
        #[arg(long)]
        role: ferry_api::Role,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List users, their roles and how many tokens each has.
    List(JsonFlag),
    /// Remove a user and every token of theirs (the last admin cannot be removed).
    Remove {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make a new API token for a user (shown once; the server keeps only its hash).
    Token {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Make a short-lived, single-use token a new host joins with
    /// (`ferry agent --name NAME --join TOKEN`).
    #[command(after_help = "Example:\n  ferry host join-token b --ttl-s 600")]
    JoinToken {
        name: String,
        /// How long the token may be used (s; default 900, at most 86400).
        #[arg(long)]
        ttl_s: Option<u64>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Forget a host (it must hold no VM) and revoke its certificates: its agent can no
    /// longer register, and the name can join again with a new token.
    Remove {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List hosts with their state, QEMU, accelerator and load.
    List(JsonFlag),
    /// Show one host's inventory.
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Maintenance mode: evacuate a host (enter), stop an evacuation (cancel), return the
    /// host to service (exit), follow it (status).
    #[command(subcommand)]
    Maintenance(crate::cmd_maintenance::MaintenanceCmd),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// The CPU baseline (setting and model) and hosts that cannot run it.
    Show(JsonFlag),
    /// Set the CPU baseline: computed from the hosts (`--auto`, the default) or a named
    /// model every host runs.
    #[command(
        after_help = "Examples:\n  ferry cluster baseline --auto\n  ferry cluster baseline --model Nehalem"
    )]
    Baseline {
        #[arg(long, conflicts_with = "model", required_unless_present = "model")]
        auto: bool,
        #[arg(long)]
        model: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Set the migration options every migration gets unless it names its own (each
    /// flag given replaces that default; `--clear` removes them all).
    #[command(
        after_help = "Examples:\n  ferry cluster defaults --max-throttle 80 --downtime-limit 200\n  ferry cluster defaults --streams 4 --compression zstd\n  ferry cluster defaults --clear"
    )]
    Defaults {
        #[command(flatten)]
        tuning: TuningArgs,
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show or set how many migrations run at once; past a limit, requests wait in the
    /// queue (`ferry migration list` shows what each waits for).
    #[command(
        after_help = "Examples:\n  ferry cluster limits\n  ferry cluster limits --per-host-out 3 --per-host-in 3\n  ferry cluster limits --per-pair 1 --cluster 4 --json"
    )]
    Limits {
        /// Migrations one host may send at once (default 2).
        #[arg(long)]
        per_host_out: Option<u32>,
        /// Migrations one host may receive at once (default 2).
        #[arg(long)]
        per_host_in: Option<u32>,
        /// Migrations between one pair of hosts, either way (default 1).
        #[arg(long)]
        per_pair: Option<u32>,
        /// Migrations in the whole cluster (default 8).
        #[arg(long)]
        cluster: Option<u32>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Load balancing: settings (mode, level, minimum stay), the plan (--dry-run), a run
    /// now (--now).
    Balance(crate::cmd_balance::BalanceArgs),
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create and boot a VM on a host.
    #[command(after_help = "Examples:\n  \
        ferry vm create web1 --host a                       # the test guest, 512 MiB\n  \
        ferry vm create web1 --host a --workload-rate 50    # guest dirties 50 MiB/s\n  \
        ferry vm create db1 --host b --spec db1.json        # a full VM spec")]
    Create(Box<VmCreateArgs>),
    /// List VMs and where they run.
    List(JsonFlag),
    /// Show a VM, with live details from its host.
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Stop a VM (its QEMU ends; the VM stays defined).
    Stop {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Boot a stopped VM again on its host.
    Start {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete a stopped VM.
    Delete { name: String },
    /// Print the tail of a VM's serial console.
    Console {
        name: String,
        /// How many bytes from the end.
        #[arg(long, default_value_t = 4096)]
        bytes: u64,
    },
    /// Live-migrate a running VM to another host.
    #[command(after_help = "Examples:\n  \
        ferry vm migrate web1 --to b\n  \
        ferry vm migrate web1 --to b --max-bandwidth 100 --json\n  \
        ferry vm migrate web1 --to b --max-throttle 80 --postcopy allowed\n  \
        ferry vm migrate web1 --to b --no-wait            # print the id and return")]
    Migrate(Box<MigrateArgs>),
}

#[derive(Args, Debug)]
pub struct VmCreateArgs {
    pub name: String,
    /// Host to boot it on (default: the best host by placement and the rules).
    #[arg(long)]
    pub host: Option<String>,
    /// Print every host's placement score and why each loser lost.
    #[arg(long)]
    pub explain: bool,
    /// A JSON VM spec file; the options below are then not allowed.
    #[arg(long, conflicts_with_all = ["memory", "vcpus", "image", "kernel", "disk", "workload_mem", "workload_rate", "cmdline", "nics", "guest_ip", "disks"])]
    pub spec: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Boot an image from the hosts' image cache.
    #[arg(long, default_value = "test-guest")]
    pub image: Option<String>,
    /// Boot this kernel (absolute path on every host) instead of an image.
    #[arg(long, conflicts_with = "image")]
    pub kernel: Option<PathBuf>,
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Boot this disk image (absolute path on every host, i.e. shared storage) instead.
    #[arg(long, conflicts_with_all = ["image", "kernel", "cmdline", "workload_mem", "workload_rate"])]
    pub disk: Option<PathBuf>,
    /// Format of --disk: qcow2 or raw (never probed).
    #[arg(long, default_value = "qcow2", requires = "disk")]
    pub disk_format: String,
    /// Test guest: MiB of memory its workload fills and verifies.
    #[arg(long)]
    pub workload_mem: Option<u64>,
    /// Test guest: MiB/s its workload rewrites.
    #[arg(long)]
    pub workload_rate: Option<f64>,
    /// Kernel command line (replaces the test guest's).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// A NIC on a network, optionally with its MAC (repeatable; the first is eth0):
    /// --nic vmnet or --nic vmnet=52:54:00:12:34:56. Ferry assigns a stable MAC if none.
    #[arg(long = "nic", value_name = "NETWORK[=MAC]")]
    pub nics: Vec<String>,
    /// A data disk from a storage pool (repeatable): --data-disk shared/data1.
    #[arg(long = "data-disk", value_name = "POOL/IMAGE")]
    pub disks: Vec<String>,
    /// Test guest: its IPv4 address on the first NIC, e.g. 172.30.1.100/24.
    #[arg(long, requires = "nics")]
    pub guest_ip: Option<String>,
    /// auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    #[arg(long, default_value = "q35")]
    pub machine: String,
    /// CPU model; `baseline` (the default) is the cluster's CPU baseline, which every host
    /// can run.
    #[arg(long, default_value = "baseline")]
    pub cpu: String,
    /// High availability: when this VM's host fails, restart it on another host (its
    /// disks must be on shared pools).
    #[arg(long)]
    pub ha: bool,
    /// HA restart order: higher first.
    #[arg(
        long,
        requires = "ha",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub ha_priority: i32,
    /// What an isolated host does with it: stop (so it can restart elsewhere, never twice)
    /// or keep-running (then it is never restarted elsewhere).
    #[arg(long, requires = "ha", value_parser = ["stop", "keep-running"], default_value = "stop")]
    pub isolation_response: String,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Modes:\n  live   the guest keeps running; memory (and local disks) stream to the destination\n  quick  the guest pauses, its state is saved to a pool both hosts share and restored on\n         the destination (downtime = save + restore; disks must be on shared pools)\n  cold   a stopped VM: its record moves, its local disks are copied and verified first\n\nExamples:\n  ferry vm migrate web1 --to b\n  ferry vm migrate web1 --mode quick --to b\n  ferry vm migrate web1 --mode cold --to b"
)]
pub struct MigrateArgs {
    pub name: String,
    /// Destination host (default: the best host by placement and the rules).
    #[arg(long)]
    pub to: Option<String>,
    /// How the VM moves: live (the default), quick (save to a shared pool and restore
    /// there) or cold (a stopped VM, its local disks copied).
    #[arg(long, default_value = "live", value_parser = ["live", "quick", "cold"])]
    pub mode: String,
    /// Print every host's placement score and why each loser lost.
    #[arg(long)]
    pub explain: bool,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// Local-pool disks are copied to the destination; keep the source's copy afterwards
    /// (by default it is deleted once the VM runs on the destination).
    #[arg(long)]
    pub keep_source: bool,
    /// Run the pre-migration checks, print the report and migrate nothing (exit 2 if a
    /// check fails).
    #[arg(long)]
    pub check: bool,
    /// Go on past checks that only warn (failed checks always refuse).
    #[arg(long)]
    pub force: bool,
    /// Return once the migration is accepted, without following it.
    #[arg(long)]
    pub no_wait: bool,
    /// Queue rank when limits make it wait: higher starts first (-100..100, default 0).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// How a migration streams and converges (per migration, or as cluster defaults).
#[derive(Args, Debug, Clone, Default)]
pub struct TuningArgs {
    /// Cap the migration stream, MiB/s.
    #[arg(long, value_name = "MIB_S")]
    pub max_bandwidth: Option<u64>,
    /// Longest acceptable switch-over pause, ms.
    #[arg(long, value_name = "MS")]
    pub downtime_limit: Option<u64>,
    /// Give up when no progress is made for this long, s.
    #[arg(long, value_name = "S")]
    pub progress_timeout: Option<u64>,
    /// Parallel streams (QEMU multifd channels); 1: a single stream.
    #[arg(long, value_name = "N")]
    pub streams: Option<u8>,
    /// Stream compression: none, zstd or zlib (with --streams 2+), xbzrle (single stream).
    #[arg(long, value_parser = ["none", "zstd", "zlib", "xbzrle"])]
    pub compression: Option<String>,
    /// Zero-page detection: none, legacy, multifd.
    #[arg(long, value_parser = ["none", "legacy", "multifd"])]
    pub zero_page: Option<String>,
    /// Highest guest vCPU throttle the convergence controller may apply, percent
    /// (0, the default: never throttle; the controller then aborts a migration that
    /// cannot converge). Never more than puts the vCPUs to sleep for a third of the
    /// downtime budget at a time (90 % for 300 ms); with post-copy allowed, a throttle
    /// that does not slow the guest's writes gives way to post-copy.
    #[arg(long, value_name = "PCT")]
    pub max_throttle: Option<u8>,
    /// Post-copy: never (the default), allowed (after throttling reached --max-throttle),
    /// automatic (as soon as pre-copy is seen not to converge). Post-copy finishes any
    /// migration, but from the switch on the guest needs both hosts until the last page
    /// moved: a broken link pauses it and Ferry resumes it when the link is back.
    #[arg(long, value_parser = ["never", "allowed", "automatic"])]
    pub postcopy: Option<String>,
    /// Completion deadline, seconds per started GiB of guest RAM (default 150). Until then a
    /// migration with nothing left to escalate to (no throttle, no post-copy) keeps trying;
    /// past it, a pass that sets no new low aborts it.
    #[arg(long, value_name = "S")]
    pub completion_timeout_per_gib: Option<u64>,
    /// Switch-over target: least (the default: QEMU aims at the least pause the guest
    /// allows, starting at 20 ms and rising towards the budget only while pre-copy stops
    /// shrinking) or budget (aim at two thirds of --downtime-limit from the start).
    #[arg(long, value_parser = ["least", "budget"])]
    pub switchover: Option<String>,
    /// Do not forward the frames that reach the source while the guest is paused (they are
    /// then lost with the source QEMU and clients wait for TCP to retransmit); for
    /// measuring what forwarding saves.
    #[arg(long)]
    pub no_frame_forwarding: bool,
}

#[derive(Subcommand, Debug)]
pub enum MigrationCmd {
    /// Recent migrations, newest first.
    List(JsonFlag),
    /// One migration with its progress or report.
    Show {
        id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Cancel a migration (the VM keeps running on its source); a queued one leaves the
    /// queue at once.
    Cancel { id: String },
    /// Settle a migration that needs attention by keeping one side, after checking both
    /// hosts. Ferry checks the choice again and refuses one that would lose the VM (the
    /// kept side must hold the whole VM) or run two copies.
    #[command(
        after_help = "Examples:\n  ferry migration show 6f1c...            # what each side reported\n  ferry migration resolve 6f1c... --keep destination\n  ferry migration resolve 6f1c... --keep source --force   # the destination host is down for good"
    )]
    Resolve {
        id: String,
        /// The side that keeps the VM.
        #[arg(long, value_enum)]
        keep: KeepSide,
        /// The other side cannot be reached and you made sure it does not run the guest.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `--keep` of `ferry migration resolve`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepSide {
    Source,
    Destination,
}

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  ferry events --vm web1\n  ferry events --kind migration --limit 50 --json\n  ferry events --follow\n  ferry events verify --key PUBLIC_KEY_HEX\n  ferry events export --to ferry-audit.jsonl"
)]
pub struct EventsArgs {
    /// Check or export the tamper-evident audit trail (without one: list events).
    #[command(subcommand)]
    pub audit: Option<crate::cmd_events::EventsCmd>,
    #[arg(long)]
    pub vm: Option<String>,
    #[arg(long)]
    pub migration: Option<String>,
    /// An operation's whole story (an evacuation: its plan, every migration it started,
    /// each VM moved or not; a scheduled run: when it fired, what it started and their
    /// stories, its outcome).
    #[arg(long)]
    pub operation: Option<String>,
    /// Event kind or kind prefix (e.g. `migration`, `vm.create`).
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Keep printing new events.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Build the test guest (Debian cloud kernel, busybox, Ferry's guest workload).
    #[command(
        after_help = "Example:\n  ferry image build            # into /var/cache/ferry/images/test-guest as root"
    )]
    Build(ImageBuildArgs),
}

#[derive(Args, Debug)]
pub struct ImageBuildArgs {
    /// Image cache directory.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The statically linked ferry-guest binary (default: found next to ferry or in target/).
    #[arg(long)]
    pub guest_bin: Option<PathBuf>,
    /// Rebuild even if the image is up to date.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u64,
    /// MiB the guest workload fills and verifies.
    #[arg(long, default_value_t = 256)]
    pub workload_mem: u64,
    /// MiB/s the guest workload rewrites during the migrations.
    #[arg(long, default_value_t = 20.0)]
    pub workload_rate: f64,
    /// Keep the lab directory (daemon logs) afterwards.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Subcommand, Debug)]
pub enum DiskCmd {
    /// Create a qcow2 image in a pool.
    #[command(after_help = "Example:\n  ferry disk create data1 --host a --pool local --size 4G")]
    Create {
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        pool: String,
        /// Virtual size: MiB, or with a suffix M, G, T.
        #[arg(long)]
        size: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List the images in a host's pools.
    List {
        #[arg(long)]
        host: String,
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Delete an image that no VM uses.
    Delete {
        name: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        pool: String,
    },
}
