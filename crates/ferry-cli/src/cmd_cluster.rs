//! `ferry host ...`, `ferry vm ...` (but migrate) and `ferry events`.

use std::time::Duration;

use ferry_api::*;

use crate::cli::{ClusterCmd, EventsArgs, HostCmd, VmCmd, VmCreateArgs};
use crate::exit::{CliError, CliResult};
use crate::output::{ago, bytes, print_json, print_table};

pub use crate::connection::client;

pub async fn host(server: &crate::connection::ConnOpts, cmd: HostCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        HostCmd::List(j) => {
            let hosts = c.hosts().await?;
            if j.json {
                return print_json(&hosts);
            }
            let rows: Vec<Vec<String>> = hosts
                .iter()
                .map(|h| {
                    vec![
                        h.name.clone(),
                        match h.health {
                            HostHealth::Alive => h.state.to_string(),
                            other => format!("{} ({other})", h.state),
                        },
                        h.inventory.qemu_version.clone(),
                        h.inventory.accel.to_string(),
                        h.inventory.cpus.to_string(),
                        format!(
                            "{} / {}",
                            bytes(h.inventory.memory_available_mib << 20),
                            bytes(h.inventory.memory_total_mib << 20)
                        ),
                        h.vms.to_string(),
                        h.migration_address.clone(),
                        ago(h.last_seen),
                    ]
                })
                .collect();
            print_table(
                &[
                    "HOST",
                    "STATE",
                    "QEMU",
                    "ACCEL",
                    "CPUS",
                    "MEM FREE/TOTAL",
                    "VMS",
                    "MIGRATION ADDR",
                    "SEEN",
                ],
                &rows,
            );
            Ok(())
        }
        HostCmd::Show { name, json } => {
            let h = c.host(&name).await?;
            // The history is extra: an older server without it still shows the host.
            let load = c.host_load(&name).await.ok();
            if json.json {
                return crate::cmd_load::print_with_load(&h, load.as_ref());
            }
            println!("host            {}", h.name);
            println!("state           {} ({})", h.state, h.health);
            println!("agent           {}", h.url);
            println!("migration addr  {}", h.migration_address);
            println!("qemu            {}", h.inventory.qemu_version);
            println!(
                "accel           {} ({})",
                h.inventory.accel, h.inventory.accel_reason
            );
            println!(
                "cpus            {} x {}",
                h.inventory.cpus, h.inventory.cpu_model_name
            );
            println!(
                "memory          {} free of {}",
                bytes(h.inventory.memory_available_mib << 20),
                bytes(h.inventory.memory_total_mib << 20)
            );
            println!(
                "vms             {} ({} running here)",
                h.vms, h.inventory.vms_running
            );
            println!(
                "maintenance     {}",
                if h.maintenance { "yes" } else { "no" }
            );
            println!(
                "cpu vendor      {} ({} CPU models usable)",
                h.inventory.cpu_vendor,
                h.inventory
                    .cpu_models
                    .iter()
                    .filter(|m| m.unavailable_features.is_empty())
                    .count()
            );
            println!("last seen       {}", ago(h.last_seen));
            if let Some(l) = &load {
                for line in crate::cmd_load::load_lines(l, 16, Some(h.inventory.cpus)) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        // Dispatched to cmd_security by main.
        HostCmd::JoinToken { .. } | HostCmd::Remove { .. } | HostCmd::Maintenance(_) => Err(
            CliError::failed("internal: host command dispatched to the wrong module"),
        ),
    }
}

pub async fn cluster(server: &crate::connection::ConnOpts, cmd: ClusterCmd) -> CliResult {
    let c = client(server)?;
    let (info, json) = match cmd {
        // Dispatched to cmd_balance by main.
        ClusterCmd::Balance(_) => {
            return Err(CliError::failed(
                "internal: cluster command dispatched to the wrong module",
            ))
        }
        ClusterCmd::Limits {
            per_host_out,
            per_host_in,
            per_pair,
            cluster,
            json,
        } => {
            let update = LimitsUpdate {
                per_host_outgoing: per_host_out,
                per_host_incoming: per_host_in,
                per_pair,
                cluster,
            };
            let limits = if update == LimitsUpdate::default() {
                c.limits().await?
            } else {
                update
                    .apply(MigrationLimits::default())
                    .validate()
                    .map_err(|e| CliError::refused(e.message))?;
                c.set_limits(&update).await?
            };
            if json.json {
                return print_json(&limits);
            }
            println!("per host out   {}", limits.per_host_outgoing);
            println!("per host in    {}", limits.per_host_incoming);
            println!("per host pair  {}", limits.per_pair);
            println!("cluster        {}", limits.cluster);
            return Ok(());
        }
        ClusterCmd::Show(j) => (c.cluster().await?, j.json),
        ClusterCmd::Defaults {
            tuning,
            clear,
            json,
        } => {
            let o = if clear {
                MigrationOptions::default()
            } else {
                // Flags given replace those defaults; the others stay as they are.
                crate::cmd_migrate::options_from(&tuning)?
                    .with_defaults(&c.cluster().await?.migration_defaults)
            };
            (c.set_migration_defaults(&o).await?, json.json)
        }
        ClusterCmd::Baseline { model, json, .. } => {
            let setting = match model {
                Some(m) => BaselineSetting::Fixed(m),
                None => BaselineSetting::Auto,
            };
            (c.set_baseline(&setting).await?, json.json)
        }
    };
    if json {
        return print_json(&info);
    }
    let mode = match &info.baseline_setting {
        BaselineSetting::Auto => "auto (the best model every host runs)".to_string(),
        BaselineSetting::Fixed(m) => format!("fixed ({m})"),
    };
    println!("cpu baseline   {mode}");
    println!(
        "new VMs get    {}",
        info.baseline_model
            .as_deref()
            .unwrap_or("nothing: no model is common to every host")
    );
    for p in &info.hosts_without_baseline {
        println!("  host {} {}", p.host, p.reason);
    }
    let d = serde_json::to_value(&info.migration_defaults).unwrap_or_default();
    let set: Vec<String> = d
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| !v.is_null() && **v != serde_json::Value::Bool(false))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "migration      {}",
        if set.is_empty() {
            "Ferry's defaults".to_string()
        } else {
            set.join(" ")
        }
    );
    Ok(())
}

pub async fn vm(server: &crate::connection::ConnOpts, cmd: VmCmd) -> CliResult {
    let c = client(server)?;
    match cmd {
        VmCmd::Create(a) => {
            let json = a.json.json;
            let req = CreateVmRequest {
                host: a.host.clone(),
                spec: spec_from_args(&a)?,
            };
            if a.explain {
                crate::cmd_rules::explain(
                    &c,
                    &PlacementRequest {
                        vm: None,
                        spec: Some(req.spec.clone()),
                    },
                    json,
                )
                .await?;
            }
            let vm = c.create_vm(&req).await?;
            if json {
                return print_json(&vm);
            }
            println!(
                "VM {} created on {}: {} (machine {}, {} vCPU, {})",
                vm.spec.name,
                vm.host,
                vm.state,
                vm.spec.machine,
                vm.spec.vcpus,
                bytes(vm.spec.memory_mib << 20)
            );
            Ok(())
        }
        VmCmd::List(j) => {
            let vms = c.vms().await?;
            if j.json {
                return print_json(&vms);
            }
            let rows: Vec<Vec<String>> = vms
                .iter()
                .map(|v| {
                    vec![
                        v.spec.name.clone(),
                        v.host.clone(),
                        v.state.to_string(),
                        v.spec.vcpus.to_string(),
                        bytes(v.spec.memory_mib << 20),
                        v.spec.machine.clone(),
                        v.migration
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "VM",
                    "HOST",
                    "STATE",
                    "VCPUS",
                    "MEMORY",
                    "MACHINE",
                    "MIGRATION",
                ],
                &rows,
            );
            Ok(())
        }
        VmCmd::Show { name, json } => {
            let v = c.vm(&name).await?;
            let load = c.vm_load(&name).await.ok();
            if json.json {
                return crate::cmd_load::print_with_load(&v, load.as_ref());
            }
            println!("vm          {}", v.spec.name);
            println!("host        {}", v.host);
            println!("state       {}", v.state);
            println!("vcpus       {}", v.spec.vcpus);
            println!("memory      {}", bytes(v.spec.memory_mib << 20));
            println!("machine     {}", v.spec.machine);
            println!("cpu model   {}", v.spec.cpu_model);
            match v.spec.ha {
                Some(h) => println!(
                    "ha          on (priority {}, isolation response {})",
                    h.priority,
                    h.isolation_response.as_str()
                ),
                None => println!("ha          off"),
            }
            if let Some(m) = v.migration {
                println!("migrating   {m}");
            }
            match &v.runtime {
                Some(rt) => {
                    println!(
                        "qemu        {} (pid {})",
                        rt.qemu_status.as_deref().unwrap_or("-"),
                        rt.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
                    );
                    println!("accel       {}", rt.accel);
                    if let Some(r) = &rt.exit_reason {
                        println!("exit        {r}");
                    }
                }
                None => println!("runtime     (host {} did not answer)", v.host),
            }
            if let Some(l) = &load {
                for line in crate::cmd_load::load_lines(l, 12, None) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        VmCmd::Stop { name, json } => {
            let v = c.stop_vm(&name).await?;
            if json.json {
                return print_json(&v);
            }
            println!("VM {} stopped on {}", v.spec.name, v.host);
            Ok(())
        }
        VmCmd::Start { name, json } => {
            let v = c.start_vm(&name).await?;
            if json.json {
                return print_json(&v);
            }
            println!("VM {} is {} on {}", v.spec.name, v.state, v.host);
            Ok(())
        }
        VmCmd::Delete { name } => {
            c.delete_vm(&name).await?;
            println!("VM {name} deleted");
            Ok(())
        }
        VmCmd::Console { name, bytes } => {
            let t = c.console(&name, bytes).await?;
            print!("{}", t.text);
            Ok(())
        }
        VmCmd::Migrate(_) => unreachable!("dispatched in main"),
    }
}

/// Builds the VM spec from the options (or reads `--spec`). Validated by the server too,
/// but checked here first so a typo fails before any request.
fn spec_from_args(a: &VmCreateArgs) -> Result<VmSpec, CliError> {
    if let Some(path) = &a.spec {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::refused(format!("cannot read {}: {e}", path.display())))?;
        let spec = VmSpec::from_json(&text).map_err(|e| CliError::refused(e.message))?;
        if spec.name != a.name {
            return Err(CliError::refused(format!(
                "the spec file names VM '{}' but the command names '{}'",
                spec.name, a.name
            )));
        }
        return Ok(spec);
    }
    let workload_mem = a
        .workload_mem
        .unwrap_or(ferry_guest::config::DEFAULT_MEM_MIB.min(a.memory / 2));
    let rate = a
        .workload_rate
        .unwrap_or(ferry_guest::config::DEFAULT_RATE_MIB);
    if !(rate.is_finite() && rate >= 0.0) {
        return Err(CliError::refused(format!(
            "--workload-rate {rate} must be a number >= 0"
        )));
    }
    let cmdline = a.cmdline.clone().unwrap_or_else(|| {
        ferry_image::kernel_cmdline_with_net(
            workload_mem,
            rate,
            a.guest_ip.as_deref(),
            ferry_guest::config::DEFAULT_PORT,
        )
    });
    let boot = match (&a.kernel, &a.disk) {
        (_, Some(path)) => Boot::Disk {
            path: path.clone(),
            format: match a.disk_format.as_str() {
                "qcow2" => DiskFormat::Qcow2,
                "raw" => DiskFormat::Raw,
                other => {
                    return Err(CliError::refused(format!(
                        "--disk-format '{other}' is not supported; use qcow2 or raw"
                    )))
                }
            },
        },
        (Some(k), None) => Boot::Kernel {
            kernel: k.clone(),
            initrd: a.initrd.clone(),
            cmdline,
        },
        (None, None) => Boot::Image {
            image: a
                .image
                .clone()
                .unwrap_or_else(|| ferry_image::DEFAULT_IMAGE_NAME.into()),
            cmdline,
        },
    };
    let spec = VmSpec {
        ha: a.ha.then(|| HaPolicy {
            priority: a.ha_priority,
            isolation_response: if a.isolation_response == "keep-running" {
                IsolationResponse::KeepRunning
            } else {
                IsolationResponse::Stop
            },
        }),
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: a.memory,
        boot,
        accel: a
            .accel
            .parse()
            .map_err(|e: ApiError| CliError::refused(e.message))?,
        machine: a.machine.clone(),
        cpu_model: a.cpu.clone(),
        disks: a
            .disks
            .iter()
            .map(|d| match d.split_once('/') {
                Some((pool, image)) => Ok(DiskRef {
                    pool: pool.into(),
                    image: image.into(),
                }),
                None => Err(CliError::refused(format!(
                    "--data-disk '{d}' must be POOL/IMAGE"
                ))),
            })
            .collect::<Result<_, _>>()?,
        nics: a
            .nics
            .iter()
            .map(|n| match n.split_once('=') {
                Some((network, mac)) => NicSpec {
                    network: network.into(),
                    mac: Some(mac.into()),
                },
                None => NicSpec {
                    network: n.clone(),
                    mac: None,
                },
            })
            .collect(),
    };
    spec.validate().map_err(|e| CliError::refused(e.message))?;
    let test_guest = matches!(spec.boot, Boot::Image { .. }) && a.cmdline.is_none();
    if test_guest && workload_mem + 128 > a.memory {
        return Err(CliError::refused(format!(
            "--workload-mem {workload_mem} MiB leaves too little for the guest kernel in {} MiB; \
             keep it at least 128 MiB below --memory",
            a.memory
        )));
    }
    Ok(spec)
}

pub async fn events(server: &crate::connection::ConnOpts, a: EventsArgs) -> CliResult {
    let c = client(server)?;
    let migration = a
        .migration
        .as_deref()
        .map(|m| {
            uuid::Uuid::parse_str(m)
                .map_err(|_| CliError::refused(format!("'{m}' is not a migration id")))
        })
        .transpose()?;
    let operation = a
        .operation
        .as_deref()
        .map(|m| {
            uuid::Uuid::parse_str(m)
                .map_err(|_| CliError::refused(format!("'{m}' is not an operation id")))
        })
        .transpose()?;
    let mut q = EventQuery {
        vm: a.vm,
        migration,
        operation,
        kind: a.kind,
        after: None,
        limit: Some(a.limit),
    };
    loop {
        let events = c.events(&q).await?;
        if let Some(last) = events.last() {
            q.after = Some(last.id);
        }
        if a.json.json {
            if a.follow {
                for e in &events {
                    // One JSON document per line when following, so a script can stream it.
                    println!("{}", serde_json::to_string(e).unwrap_or_default());
                }
            } else {
                print_json(&events)?;
            }
        } else {
            for e in &events {
                println!(
                    "{} #{:<5} {:<6} {:<24} {:<18} {}",
                    e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.id,
                    e.outcome.as_str(),
                    e.kind,
                    e.actor,
                    e.message
                );
            }
        }
        if !a.follow {
            return Ok(());
        }
        q.limit = Some(1000);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
