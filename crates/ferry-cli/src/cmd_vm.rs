//! `ferry vm create|list|show|stop|start|delete|console` (migrate has its own module).

use ferry_api::*;

use crate::cli::{VmCmd, VmCreateArgs};
use crate::cmd_cluster::client;
use crate::exit::{CliError, CliResult};
use crate::output::{bytes, print_json, print_table};

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
