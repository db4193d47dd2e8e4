//! Registration with the server: the agent introduces itself and then repeats it as a
//! heartbeat carrying fresh inventory. The server marks a host disconnected when the
//! heartbeats stop.
//!
//! The heartbeat also renews the host's certificate once two thirds of its life are gone
//! (the new one serves new connections; open ones, and QEMU streams, are not touched).

use std::sync::Arc;

use ferry_api::client::ServerClient;
use ferry_api::{HostRegistration, ReportedVm};

use crate::host::Agent;

pub async fn run(agent: Arc<Agent>) {
    let Some(server) = agent.config.server_url.clone() else {
        return;
    };
    let connect = |agent: &Agent| {
        let creds = agent
            .identity
            .as_ref()
            .map(|id| id.credentials())
            .unwrap_or_default();
        ServerClient::connect(&server, &creds)
    };
    let mut client = match connect(&agent) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot use server URL {server}: {e}");
            return;
        }
    };
    let mut failing = false;
    let mut beats: u64 = 0;
    loop {
        beats += 1;
        // Every few heartbeats: has the cluster's CA bundle changed (a rotation)?
        if let Some(id) = agent.identity.as_ref().filter(|_| beats % 4 == 1) {
            match id.refresh_bundle(&server).await {
                Ok(true) => {
                    tracing::info!("the cluster's CA bundle changed; trusting the new one");
                    if let Ok(c) = connect(&agent) {
                        client = c;
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::debug!("cannot check the CA bundle: {e}"),
            }
        }
        if let Some(id) = agent.identity.as_ref().filter(|id| id.due_for_renewal()) {
            match id.renew(&server).await {
                Ok(until) => {
                    tracing::info!(until, "host certificate renewed");
                    match connect(&agent) {
                        Ok(c) => client = c,
                        Err(e) => tracing::error!("cannot use the renewed certificate: {e}"),
                    }
                }
                Err(e) => tracing::warn!("cannot renew the host certificate (will retry): {e}"),
            }
        }
        let reg = HostRegistration {
            name: agent.config.name.clone(),
            url: agent.url.clone(),
            migration_address: agent.config.advertised_migration_address().to_string(),
            inventory: agent.inventory().await,
            vms: agent
                .list()
                .await
                .into_iter()
                .map(|rt| ReportedVm {
                    name: rt.spec.name,
                    state: rt.state,
                })
                .collect(),
            load: agent.load_report().await,
            peers: agent.ha.view(),
        };
        let sent_at = chrono::Utc::now();
        let answer = client.register_host(&reg).await;
        if let Ok(host) = &answer {
            if let Some(lease) = &host.lease {
                agent.ha.granted(sent_at, lease);
            }
        }
        match answer {
            Ok(_) if failing => {
                tracing::info!(%server, "registered with the server again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                tracing::warn!(%server, "cannot register with the server (will keep trying): {e}");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(agent.config.heartbeat).await;
    }
}
