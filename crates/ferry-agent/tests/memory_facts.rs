//! The memory facts of the evacuation estimate, read from a real QEMU (TCG) as the agent's
//! `GET /v1/vms/{name}/memory` reads them: the resident size from `/proc`, the dirty rate
//! from QEMU's page sampling.

#[path = "../../ferry-qmp/tests/common/mod.rs"]
mod common;

use common::Qemu;

#[tokio::test]
async fn a_running_guest_s_memory_facts_are_read() {
    // A 128 MiB PC guest running SeaBIOS (no boot device: it keeps the BIOS busy).
    let mut q = Qemu::spawn("memory-facts", &["-machine", "pc", "-m", "128"]);
    let qmp = q.connect().await;
    let facts = ferry_agent::memory::facts(&qmp, q.pid(), 128)
        .await
        .expect("memory facts");
    eprintln!("{facts:?}");
    assert_eq!(facts.ram_mib, 128);
    assert!(facts.resident_mib > 0, "{facts:?}");
    let rate = facts.dirty_rate_mib_s.expect("a dirty rate was measured");
    assert!(rate >= 0.0, "{facts:?}");
    assert_eq!(facts.sampled_ms, 1000);
    // A second measurement works too: the first one is over.
    let again = ferry_agent::memory::facts(&qmp, q.pid(), 128)
        .await
        .expect("memory facts again");
    assert!(again.dirty_rate_mib_s.is_some(), "{again:?}");
    let _ = qmp.quit().await;
}
