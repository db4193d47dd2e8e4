//! VMs and their disk images. A create or a start is a claim (see [`crate::admission`]):
//! the VM is recorded `starting` on its host in the same transaction that checked the
//! host has room and its images are not someone else's, and only then launched; a launch
//! that fails gives the claim back. A disk image is deleted only if no VM in the cluster,
//! stopped ones included, uses it.

use chrono::Utc;
use ferry_api::client::ClientError;
use ferry_api::*;

use super::Server;
use crate::admission;

impl Server {
    pub fn find_vm(&self, name: &str) -> Result<Vm, ApiError> {
        validate_name("VM name", name)?;
        self.store.vm(name)?.ok_or_else(|| {
            ApiError::not_found(format!("no VM named '{name}' (see `ferry vm list`)"))
        })
    }

    pub fn vms(&self) -> Result<Vec<Vm>, ApiError> {
        Ok(self.store.vms()?)
    }

    /// A VM with live details from its host's agent (absent if the agent does not answer).
    pub async fn vm_live(&self, name: &str) -> Result<Vm, ApiError> {
        let mut vm = self.find_vm(name)?;
        if let Ok((_, agent)) = self.agent(&vm.host) {
            vm.runtime = agent.vm(name).await.ok();
        }
        Ok(vm)
    }

    pub(super) async fn create_vm(&self, mut req: CreateVmRequest) -> Result<Vm, ApiError> {
        req.spec.validate()?;
        req.spec.assign_defaults();
        let host_name = req
            .host
            .clone()
            .ok_or_else(|| ApiError::internal("the VM was not placed"))?;
        validate_name("host name", &host_name)?;
        self.resolve_cpu_model(&mut req.spec)?;
        if self.store.vm(&req.spec.name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "a VM named '{}' already exists",
                req.spec.name
            )));
        }
        let (host, agent) = self.agent(&host_name)?;
        if host.maintenance {
            return Err(ApiError::conflict(format!(
                "host {} is in maintenance: it takes no new VMs",
                host.name
            )));
        }
        let _disks = self.disk_ops.lock().await;
        let now = Utc::now();
        let mut vm = Vm {
            spec: req.spec.clone(),
            host: host.name.clone(),
            state: VmState::Starting,
            migration: None,
            created_at: now,
            updated_at: now,
            runtime: None,
        };
        let (h, spec) = (&host.name, &req.spec);
        self.store.claim_new_vm(&vm, &|view| {
            admission::admit(view, h, spec)?;
            admission::disks_free(view, h, spec)
        })?;
        match agent.launch(&req.spec).await {
            Ok(runtime) => {
                // The agent resolved the machine alias; that concrete type is the VM's for life.
                self.store
                    .set_vm_launched(&req.spec.name, &runtime.spec, runtime.state)?;
                vm.spec = runtime.spec.clone();
                vm.state = runtime.state;
                vm.runtime = Some(runtime);
                Ok(vm)
            }
            Err(e) => {
                if matches!(e, ClientError::Unreachable { .. }) {
                    // The agent may have started it before the answer got lost.
                    let _ = agent.remove(&req.spec.name).await;
                }
                self.store.delete_vm(&req.spec.name)?;
                Err(e.into_api_error(&format!("host {} could not start the VM", host.name)))
            }
        }
    }

    pub(super) fn refuse_if_migrating(&self, vm: &Vm) -> Result<(), ApiError> {
        match vm.migration {
            Some(id) => Err(ApiError::conflict(format!(
                "VM '{}' is migrating (migration {id}); wait for it or cancel it",
                vm.spec.name
            ))),
            None => Ok(()),
        }
    }

    pub(super) async fn stop_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        let (_, agent) = self.agent(&vm.host)?;
        match agent.stop(name).await {
            Ok(_) => {}
            // Already gone on the host (crashed, or host restarted): stopped is the truth.
            Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                return Err(e.into_api_error(&format!("host {} could not stop the VM", vm.host)))
            }
        }
        self.store.set_vm_state(name, VmState::Stopped)?;
        self.find_vm(name)
    }

    pub(super) async fn start_vm(&self, name: &str) -> Result<Vm, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        if vm.state.is_active() {
            return Err(ApiError::conflict(format!(
                "VM '{name}' is already {} on {}",
                vm.state, vm.host
            )));
        }
        let (_, agent) = self.agent(&vm.host)?;
        let _disks = self.disk_ops.lock().await;
        let (h, spec) = (&vm.host, &vm.spec);
        self.store.claim_start(name, &|view| {
            admission::admit(view, h, spec)?;
            admission::disks_free(view, h, spec)
        })?;
        match agent.launch(&vm.spec).await {
            Ok(rt) => self.store.set_vm_state(name, rt.state)?,
            Err(e) => {
                self.store.set_vm_state(name, vm.state)?;
                return Err(e.into_api_error(&format!("host {} could not start the VM", vm.host)));
            }
        }
        self.vm_live(name).await
    }

    pub(super) async fn delete_vm(&self, name: &str) -> Result<String, ApiError> {
        let vm = self.find_vm(name)?;
        self.refuse_if_migrating(&vm)?;
        if vm.state.is_active() {
            return Err(ApiError::conflict(format!(
                "VM '{name}' is {}; stop it first",
                vm.state
            )));
        }
        if let Ok((_, agent)) = self.agent(&vm.host) {
            let _ = agent.remove(name).await;
        }
        self.store.delete_vm(name)?;
        Ok(format!("VM {name}"))
    }

    pub(super) async fn create_disk(
        &self,
        host: &str,
        pool: &str,
        req: &CreateDiskRequest,
    ) -> Result<DiskImage, ApiError> {
        req.validate()?;
        validate_name("pool name", pool)?;
        let (_, agent) = self.agent(host)?;
        agent
            .create_disk(pool, req)
            .await
            .map_err(|e| e.into_api_error(&format!("host {host}")))
    }

    /// Refuses while any VM of the cluster uses the image (running anywhere, or stopped),
    /// naming it.
    pub(super) async fn delete_disk(
        &self,
        host: &str,
        pool: &str,
        disk: &str,
    ) -> Result<String, ApiError> {
        validate_name("disk name", disk)?;
        validate_name("pool name", pool)?;
        let (_, agent) = self.agent(host)?;
        let _disks = self.disk_ops.lock().await;
        let view = self.store.view()?;
        if let Some(owner) = admission::image_owner(&view, host, pool, disk) {
            return Err(ApiError::conflict(format!(
                "disk {pool}/{disk} on {host} belongs to VM {} ({} on {}); delete the VM first",
                owner.spec.name, owner.state, owner.host
            )));
        }
        agent
            .delete_disk(pool, disk)
            .await
            .map_err(|e| e.into_api_error(&format!("host {host}")))?;
        Ok(format!("disk {disk} in pool {pool} on {host}"))
    }
}
