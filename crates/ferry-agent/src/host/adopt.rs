//! Finding again the QEMUs an earlier agent left running.
//!
//! A QEMU whose monitor does not answer when the agent starts is not dropped: it runs, so
//! it is listed as `Unresponsive` (a 404 would tell the server the VM is gone) and
//! adoption is retried in the background until its monitor answers or it exits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::Agent;
use crate::persist::{PersistedVm, Role};
use crate::runtime::{record_path, Adoption, QemuVm, Unadopted};

/// How long a monitor gets to answer at the agent's start, and on each retry.
const FIRST_WAIT: Duration = Duration::from_secs(5);
const RETRY_WAIT: Duration = Duration::from_secs(1);
/// How often adoption of an unresponsive QEMU is retried.
const RETRY_EVERY: Duration = Duration::from_secs(2);

pub(super) type Vms = Arc<Mutex<HashMap<String, Arc<QemuVm>>>>;
pub(super) type Unadopteds = Arc<Mutex<HashMap<String, Unadopted>>>;

impl Agent {
    /// Adopts every VM in the state directory; starts the retries for those whose monitor
    /// does not answer.
    pub(super) async fn adopt_running(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.vms_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir.is_dir() {
                adopt_one(&self.config.name, &self.vms, &self.unadopted, dir, true).await;
            }
        }
        if !self.unadopted.lock().await.is_empty() {
            let (host, vms, unadopted) = (
                self.config.name.clone(),
                self.vms.clone(),
                self.unadopted.clone(),
            );
            tokio::spawn(retry_adoption(host, vms, unadopted));
        }
    }
}

/// One adoption attempt of the VM in `dir` (`first`: at the agent's start, else a retry);
/// the outcome lands in `vms` or `unadopted`, or the record goes (its QEMU is gone).
async fn adopt_one(host: &str, vms: &Vms, unadopted: &Unadopteds, dir: PathBuf, first: bool) {
    let wait = if first { FIRST_WAIT } else { RETRY_WAIT };
    match QemuVm::adopt(dir.clone(), wait).await {
        Ok(Adoption::Adopted(vm)) => {
            // Before taking the locks: aborting a copy may take seconds.
            restart_watchers(&vm).await;
            // Both locks, so a `remove` of the unadopted VM in between is seen: a retry
            // adopts only a VM still waiting.
            let mut vms = vms.lock().await;
            let mut waiting = unadopted.lock().await;
            let retried = waiting.remove(&vm.name).is_some();
            if first || retried {
                tracing::info!(vm = %vm.name, pid = vm.pid(), "adopted running QEMU");
                vms.insert(vm.name.clone(), vm);
            }
        }
        Ok(Adoption::Gone(record)) => {
            tracing::info!(dir = %dir.display(), "VM record without a running QEMU; removed");
            unadopted.lock().await.remove(&record.spec.name);
            forget_files(host, &record, &dir);
        }
        Ok(Adoption::Unresponsive(u)) => {
            let mut waiting = unadopted.lock().await;
            if !waiting.contains_key(&u.record.spec.name) {
                tracing::warn!(vm = %u.record.spec.name, pid = u.pid, "cannot adopt VM yet, will retry: {}", u.reason);
            }
            waiting.insert(u.record.spec.name.clone(), u);
        }
        Err(e) => tracing::warn!(dir = %dir.display(), "cannot adopt VM: {e}"),
    }
}

/// Retries every unadopted VM until none is left.
async fn retry_adoption(host: String, vms: Vms, unadopted: Unadopteds) {
    loop {
        tokio::time::sleep(RETRY_EVERY).await;
        let waiting: Vec<PathBuf> = unadopted
            .lock()
            .await
            .values()
            .map(|u| u.dir.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        for dir in waiting {
            adopt_one(&host, &vms, &unadopted, dir, false).await;
        }
    }
}

/// Removes what a VM whose QEMU is gone left: its taps and its directory.
pub(super) fn forget_files(host: &str, record: &PersistedVm, dir: &Path) {
    for tap in crate::net::recorded_taps(host, record) {
        crate::net::delete_tap(&tap);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The record of the VM in `dir`, if it can be read.
pub(super) fn load_record(dir: &Path) -> Option<PersistedVm> {
    PersistedVm::load(&record_path(dir)).ok()
}

/// Restarts the tasks a migration in flight needs, which died with the earlier agent.
async fn restart_watchers(vm: &Arc<QemuVm>) {
    let rec = vm.record();
    if rec.role == Role::Incoming && rec.exports_disks {
        vm.release_after_stream();
    }
    vm.resume_copies().await;
}
