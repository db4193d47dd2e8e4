//! The VM spec as a QEMU command line: a pure function.
//!
//! Migration needs the destination's device model to match the source's exactly (the
//! device state stream is laid out by device and bus address). So everything that shapes the
//! guest's hardware comes from the spec alone — machine type (already resolved to a
//! concrete version), CPU model, vCPUs, memory, devices in a fixed order — and everything
//! host-specific (socket, console and pid paths) is kept to host-side options that the
//! guest cannot see. `-nodefaults` removes QEMU's implicit devices so nothing depends on
//! QEMU's build defaults.

use std::ffi::OsString;
use std::path::PathBuf;

use ferry_api::{Accel, DiskFormat, VmSpec};

/// What this host boots the VM from (image cache or absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedBoot {
    /// Direct kernel boot.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Firmware boot from a disk image.
    Disk { path: PathBuf, format: DiskFormat },
}

/// Host-side paths of one QEMU instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePaths {
    pub qmp_socket: PathBuf,
    /// Ferry's second monitor, for out-of-band commands only (post-copy pause and
    /// recovery must get through while QEMU's main loop waits for a page; in-band commands
    /// queued on the first monitor could make QEMU stop reading it).
    pub oob_qmp_socket: PathBuf,
    /// A second QMP monitor for an operator's own tools (diagnostics, benchmarks); what is
    /// done there bypasses Ferry. None: only Ferry's monitor.
    pub aux_qmp_socket: Option<PathBuf>,
    pub console_log: PathBuf,
    pub pidfile: PathBuf,
}

/// Builds QEMU's arguments. `machine` must already be the concrete machine type, `accel`
/// the resolved one (never Auto). `taps` holds the host tap device of each of the spec's
/// NICs, and `disks` the host path of each of its data disks, in order. `start` says
/// whether QEMU boots or waits for a migration stream.
/// How QEMU starts: booting or waiting for a stream, and as which user.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub start: StartMode,
    /// Drop to this unprivileged user once set up (`-run-with user=`); None: stay root.
    pub run_as: Option<&'a str>,
}

impl Launch<'_> {
    pub fn as_root(start: StartMode) -> Launch<'static> {
        Launch {
            start,
            run_as: None,
        }
    }
}

pub fn build_args(
    spec: &VmSpec,
    boot: &ResolvedBoot,
    accel: Accel,
    paths: &RuntimePaths,
    taps: &[String],
    disks: &[PathBuf],
    how: Launch<'_>,
) -> Vec<OsString> {
    let Launch { start, run_as } = how;
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-name");
    push(&format!("guest={},debug-threads=on", spec.name));
    push("-machine");
    push(&spec.machine);
    push("-accel");
    push(match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg | Accel::Auto => "tcg",
    });
    push("-cpu");
    push(&spec.cpu_model);
    push("-smp");
    push(&spec.vcpus.to_string());
    push("-m");
    push(&format!("size={}M", spec.memory_mib));
    push("-nodefaults");
    push("-no-user-config");
    // seccomp: QEMU runs as root and parses what guests and the network send it; a
    // compromised QEMU may not exec, gain privileges, or use obsolete or scheduling
    // syscalls. Ferry never asks QEMU to spawn anything (no exec: migration, no tap
    // scripts), so nothing it does needs them.
    push("-sandbox");
    match run_as {
        // QEMU drops to the user itself (setuid after opening what it needs), so set*id
        // must stay allowed; once it runs as that user it cannot climb back anyway.
        Some(_) => push("on,obsolete=deny,spawn=deny,resourcecontrol=deny"),
        None => push("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"),
    }
    if let Some(user) = run_as {
        push("-run-with");
        push(&format!("user={user}"));
    }
    push("-display");
    push("none");
    push("-msg");
    push("timestamp=on");
    // The serial console goes to a file the agent reads (the guest workload reports there).
    push("-chardev");
    push(&format!(
        "file,id=console0,path={}",
        qemu_path(&paths.console_log)
    ));
    push("-serial");
    push("chardev:console0");
    push("-qmp");
    push(&format!(
        "unix:{},server=on,wait=off",
        qemu_path(&paths.qmp_socket)
    ));
    a.push("-qmp".into());
    a.push(
        format!(
            "unix:{},server=on,wait=off",
            qemu_path(&paths.oob_qmp_socket)
        )
        .into(),
    );
    if let Some(aux) = &paths.aux_qmp_socket {
        a.push("-qmp".into());
        a.push(format!("unix:{},server=on,wait=off", qemu_path(aux)).into());
    }
    a.push("-pidfile".into());
    a.push(paths.pidfile.clone().into_os_string());
    match boot {
        ResolvedBoot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            a.push("-kernel".into());
            a.push(kernel.clone().into_os_string());
            if let Some(initrd) = initrd {
                a.push("-initrd".into());
                a.push(initrd.clone().into_os_string());
            }
            a.push("-append".into());
            a.push(cmdline.clone().into());
        }
        ResolvedBoot::Disk { path, format } => {
            // JSON -blockdev: a path is a JSON string, so no character in it can start a
            // new option. The node names and the device id are fixed, so the block layout is
            // the same on every host (the device state stream refers to them).
            let file = serde_json::json!({
                "driver": "file", "filename": path, "node-name": "boot-file",
            });
            let mut fmt = serde_json::json!({
                "driver": format.as_str(), "file": "boot-file", "node-name": "boot-disk",
            });
            if format.as_str() == "qcow2" {
                // Never a backing file named inside the image (it could be any host file).
                fmt["backing"] = serde_json::Value::Null;
            }
            for v in [file, fmt] {
                a.push("-blockdev".into());
                a.push(v.to_string().into());
            }
            a.push("-device".into());
            a.push("virtio-blk-pci,drive=boot-disk,id=boot-disk0,bootindex=0".into());
        }
    }
    // Data disks: JSON -blockdev (host side: the path), fixed node names and device ids
    // (guest side). qcow2 only: pools hold qcow2 images, and the format is never probed.
    for (i, path) in disks.iter().enumerate() {
        let file = serde_json::json!({
            "driver": "file", "filename": path, "node-name": format!("disk{i}-file"),
        });
        // `backing: null`: a backing file named inside the image is never opened (it could
        // be any host file; Ferry makes no chains).
        let fmt = serde_json::json!({
            "driver": "qcow2", "file": format!("disk{i}-file"), "node-name": format!("disk{i}"),
            "backing": null,
        });
        for v in [file, fmt] {
            a.push("-blockdev".into());
            a.push(v.to_string().into());
        }
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=disk{i},id=disk{i}dev").into());
    }
    // NICs: the tap is host-side (-netdev); the device, its MAC and id are what the guest
    // sees and must match on every host. The MAC comes from the spec, assigned once.
    for (i, nic) in spec.nics.iter().enumerate() {
        let Some(tap) = taps.get(i) else { break };
        let mac = nic
            .mac
            .clone()
            .unwrap_or_else(|| ferry_api::stable_mac(&spec.name, i));
        a.push("-netdev".into());
        a.push(format!("tap,id=net{i},ifname={tap},script=no,downscript=no").into());
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=net{i},mac={mac},id=nic{i}").into());
    }
    if start != StartMode::Boot {
        a.push("-incoming".into());
        a.push("defer".into());
    }
    if start == StartMode::IncomingHeld {
        a.push("-S".into());
    }
    a
}

/// How QEMU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Boot the guest.
    Boot,
    /// Wait for a migration stream (`-incoming defer`: the agent picks the listen address
    /// over QMP afterwards); the guest runs as soon as the stream completes.
    Incoming,
    /// As `Incoming`, but the vCPUs stay stopped after the stream (`-S`) until the agent
    /// starts them: a destination exporting disks for a storage copy must drop the exports
    /// first, because the guest's devices do not share write access once running.
    IncomingHeld,
}

/// A path inside a QEMU option value: commas are escaped by doubling.
fn qemu_path(p: &std::path::Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The arguments that define the guest's hardware (everything but host-side paths), for
/// comparing two command lines in tests and checks.
pub fn guest_visible_args(args: &[OsString]) -> Vec<String> {
    let host_side = [
        "-chardev",
        "-qmp",
        "-pidfile",
        "-kernel",
        "-initrd",
        "-incoming",
        "-blockdev",
        "-netdev",
    ];
    let mut out = Vec::new();
    let mut skip_next = false;
    for arg in args {
        let s = arg.to_string_lossy().into_owned();
        if s == "-S" {
            continue; // when the vCPUs start is host-side timing, not hardware
        }
        if skip_next {
            skip_next = false;
            continue;
        }
        if host_side.contains(&s.as_str()) {
            skip_next = true;
            continue;
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::Boot;

    fn taps(host: &str) -> Vec<String> {
        vec![format!("tap-{host}0")]
    }

    fn spec() -> VmSpec {
        VmSpec {
            ha: None,
            name: "web1".into(),
            vcpus: 2,
            memory_mib: 512,
            boot: Boot::Image {
                image: "test-guest".into(),
                cmdline: "console=ttyS0".into(),
            },
            accel: Accel::Auto,
            machine: "pc-q35-10.0".into(),
            cpu_model: "qemu64".into(),
            nics: vec![ferry_api::NicSpec {
                network: "vmnet".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
            }],
            disks: vec![],
        }
    }

    fn boot(dir: &str) -> ResolvedBoot {
        ResolvedBoot::Kernel {
            kernel: format!("{dir}/vmlinuz").into(),
            initrd: Some(format!("{dir}/initrd.img").into()),
            cmdline: "console=ttyS0".into(),
        }
    }

    #[test]
    fn a_disk_path_cannot_inject_options() {
        let disk = ResolvedBoot::Disk {
            path: "/srv/a,b\",driver=raw.qcow2".into(),
            format: DiskFormat::Qcow2,
        };
        let args = strings(&build_args(
            &spec(),
            &disk,
            Accel::Tcg,
            &paths("/v"),
            &[],
            &[],
            Launch::as_root(StartMode::Boot),
        ));
        let file: serde_json::Value =
            serde_json::from_str(&args[args.iter().position(|a| a == "-blockdev").unwrap() + 1])
                .unwrap();
        assert_eq!(file["filename"], "/srv/a,b\",driver=raw.qcow2");
        assert_eq!(file["driver"], "file");
        assert!(args
            .iter()
            .any(|a| a == "virtio-blk-pci,drive=boot-disk,id=boot-disk0,bootindex=0"));
        assert!(!args.contains(&"-kernel".to_string()));
    }

    fn paths(dir: &str) -> RuntimePaths {
        RuntimePaths {
            qmp_socket: format!("{dir}/qmp.sock").into(),
            oob_qmp_socket: format!("{dir}/qmp-oob.sock").into(),
            aux_qmp_socket: None,
            console_log: format!("{dir}/console.log").into(),
            pidfile: format!("{dir}/qemu.pid").into(),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn same_spec_gives_the_same_guest_on_every_host() {
        let a = build_args(
            &spec(),
            &boot("/a/img"),
            Accel::Tcg,
            &paths("/a/vm"),
            &taps("a"),
            &[],
            Launch::as_root(StartMode::Boot),
        );
        let b = build_args(
            &spec(),
            &boot("/b/img"),
            Accel::Tcg,
            &paths("/b/vm"),
            &taps("b"),
            &[],
            Launch::as_root(StartMode::Incoming),
        );
        assert_eq!(guest_visible_args(&a), guest_visible_args(&b));
        assert_ne!(a, b, "host-side paths do differ");
    }

    #[test]
    fn data_disks_get_fixed_node_names_and_ids_with_host_paths_in_json() {
        let disks = vec![PathBuf::from("/pools/a,b/data1.qcow2")];
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &[],
            &disks,
            Launch::as_root(StartMode::Boot),
        ));
        let first = args.iter().position(|a| a == "-blockdev").unwrap();
        let file: serde_json::Value = serde_json::from_str(&args[first + 1]).unwrap();
        assert_eq!(file["filename"], "/pools/a,b/data1.qcow2");
        assert_eq!(file["node-name"], "disk0-file");
        let fmt: serde_json::Value = serde_json::from_str(&args[first + 3]).unwrap();
        assert_eq!(
            (fmt["driver"].as_str(), fmt["node-name"].as_str()),
            (Some("qcow2"), Some("disk0"))
        );
        assert!(
            fmt.get("backing").is_some_and(|b| b.is_null()),
            "qcow2 is opened without a backing file: {fmt}"
        );
        assert!(args.contains(&"virtio-blk-pci,drive=disk0,id=disk0dev".to_string()));
        let elsewhere = vec![PathBuf::from("/other/pool/data1.qcow2")];
        let b = build_args(
            &spec(),
            &boot("/j"),
            Accel::Tcg,
            &paths("/w"),
            &[],
            &elsewhere,
            Launch::as_root(StartMode::Incoming),
        );
        assert_eq!(
            guest_visible_args(&build_args(
                &spec(),
                &boot("/i"),
                Accel::Tcg,
                &paths("/v"),
                &[],
                &disks,
                Launch::as_root(StartMode::Boot),
            )),
            guest_visible_args(&b)
        );
    }

    #[test]
    fn nics_keep_their_mac_and_id_and_take_the_host_tap() {
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &taps("a"),
            &[],
            Launch::as_root(StartMode::Boot),
        ));
        assert!(args.contains(&"tap,id=net0,ifname=tap-a0,script=no,downscript=no".to_string()));
        assert!(
            args.contains(&"virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,id=nic0".to_string())
        );
    }

    #[test]
    fn incoming_waits_for_a_deferred_stream() {
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &[],
            &[],
            Launch::as_root(StartMode::Incoming),
        ));
        let pos = args.iter().position(|a| a == "-incoming").unwrap();
        assert_eq!(args[pos + 1], "defer");
        assert!(!args.contains(&"-S".to_string()));
        let held = build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &[],
            &[],
            Launch::as_root(StartMode::IncomingHeld),
        );
        assert!(strings(&held).contains(&"-S".to_string()));
        assert_eq!(
            guest_visible_args(&held),
            guest_visible_args(&build_args(
                &spec(),
                &boot("/i"),
                Accel::Tcg,
                &paths("/v"),
                &[],
                &[],
                Launch::as_root(StartMode::Boot),
            )),
            "holding the vCPUs is not guest-visible"
        );
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &[],
            &[],
            Launch::as_root(StartMode::Boot),
        ));
        assert!(!args.contains(&"-incoming".to_string()));
    }

    #[test]
    fn the_spec_shapes_the_hardware() {
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Kvm,
            &paths("/v"),
            &[],
            &[],
            Launch::as_root(StartMode::Boot),
        ));
        let joined = args.join(" ");
        for needle in [
            "-machine pc-q35-10.0",
            "-accel kvm",
            "-cpu qemu64",
            "-smp 2",
            "-m size=512M",
            "-nodefaults",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ] {
            assert!(joined.contains(needle), "missing {needle} in {joined}");
        }
    }

    #[test]
    fn commas_in_host_paths_are_escaped() {
        let p = RuntimePaths {
            qmp_socket: "/x,y/qmp.sock".into(),
            ..paths("/v")
        };
        let args = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &p,
            &[],
            &[],
            Launch::as_root(StartMode::Boot),
        ));
        assert!(args.contains(&"unix:/x,,y/qmp.sock,server=on,wait=off".to_string()));
    }

    #[test]
    fn an_unprivileged_qemu_drops_to_its_user_inside_the_sandbox() {
        let joined = strings(&build_args(
            &spec(),
            &boot("/i"),
            Accel::Tcg,
            &paths("/v"),
            &[],
            &[],
            Launch {
                start: StartMode::Boot,
                run_as: Some("ferry-qemu"),
            },
        ))
        .join(" ");
        assert!(joined.contains("-run-with user=ferry-qemu"), "{joined}");
        assert!(
            joined.contains("-sandbox on,obsolete=deny,spawn=deny"),
            "{joined}"
        );
        assert!(
            !joined.contains("elevateprivileges=deny"),
            "QEMU must be able to drop: {joined}"
        );
    }
}
