//! The load history: heartbeats write it, `ferry host show` / `ferry vm show` and the
//! balancer read it (see [`crate::load_book`]).

use chrono::Utc;
use ferry_api::*;

use super::Server;

impl Server {
    /// Keeps a heartbeat's load report, after checking it; a bad report is dropped (and
    /// logged), the heartbeat itself still counts.
    pub(super) fn record_load(&self, reg: &HostRegistration) {
        let Some(report) = &reg.load else {
            return;
        };
        if let Err(why) = report.validate(reg.inventory.cpus) {
            tracing::warn!(host = %reg.name, "load report dropped: {why}");
            return;
        }
        let on_host: std::collections::HashSet<String> = match self.store.vms() {
            Ok(vms) => vms
                .into_iter()
                .filter(|v| v.host == reg.name)
                .map(|v| v.spec.name)
                .collect(),
            Err(e) => {
                tracing::warn!("load report not kept: {e}");
                return;
            }
        };
        let mut book = self.load.lock().unwrap_or_else(|p| p.into_inner());
        book.record(&reg.name, report, Utc::now(), &|vm| on_host.contains(vm));
    }

    pub(super) fn host_load(&self, name: &str) -> Result<LoadHistory, ApiError> {
        validate_name("host name", name)?;
        self.host(name)?;
        let book = self.load.lock().unwrap_or_else(|p| p.into_inner());
        Ok(book.host(name, Utc::now()))
    }

    pub(super) fn vm_load(&self, name: &str) -> Result<LoadHistory, ApiError> {
        validate_name("VM name", name)?;
        self.find_vm(name)?;
        let book = self.load.lock().unwrap_or_else(|p| p.into_inner());
        Ok(book.vm(name, Utc::now()))
    }
}
