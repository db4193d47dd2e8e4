//! Placement on a three-host lab with real daemons and QEMU: VMs created without `--host`
//! and migrated without `--to` go where the score and the rules say; `must` rules hold
//! even against the score; a VM no host may take is refused with the rule named.

mod common;

use ferry_api::*;
use ferry_lab::test_vm_spec;

use common::*;

async fn create(lab: &ferry_lab::Lab, name: &str) -> Result<Vm, ferry_api::client::ClientError> {
    lab.client()
        .create_vm(&CreateVmRequest {
            host: None,
            spec: test_vm_spec(name, 256, 16, 0.0),
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_go_where_the_score_and_the_rules_say() {
    let (lab, _cfg) = start_lab(&["a", "b", "c"]).await;
    let c = lab.client();

    // The first VM goes somewhere; the next ones avoid the host with less room left.
    let p1 = create(&lab, "p1").await.expect("p1 placed");
    let x = p1.host.clone();

    // Affinity (must) wins over the score: p4 joins p1 on the fullest host.
    let out = ferry(
        &lab,
        &["rule", "add", "together", "--affinity", "--vms", "p1,p4"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p4 = create(&lab, "p4").await.expect("p4 placed");
    assert_eq!(p4.host, x, "affinity keeps p4 with p1");

    // Anti-affinity (must): p2 never lands with p1.
    let out = ferry(
        &lab,
        &["rule", "add", "apart", "--anti-affinity", "--vms", "p1,p2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let p2 = create(&lab, "p2").await.expect("p2 placed");
    assert_ne!(p2.host, x);

    // A migration without --to: not its own host, not p1's; the third host is left.
    let out = ferry(&lab, &["vm", "migrate", "p2", "--explain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("must rule apart"), "{text}");
    assert!(text.contains("the VM runs here now"), "{text}");
    let third = ["a", "b", "c"]
        .into_iter()
        .find(|h| *h != x && *h != p2.host)
        .unwrap();
    assert_eq!(c.vm("p2").await.unwrap().host, third);

    // p4 may go nowhere (it must stay with p1): refused, naming the rule, nothing moved.
    let e = c
        .migrate(&MigrateRequest {
            vm: "p4".into(),
            to: None,
            options: Default::default(),
            priority: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must rule together"), "{e}");
    assert_eq!(c.vm("p4").await.unwrap().host, x);

    // Every placement is an event with the runner-up.
    let placed = c
        .events(&EventQuery {
            kind: Some("vm.placed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(placed.len() >= 4, "{placed:?}");
    assert!(placed.iter().all(|e| e.message.contains("runner-up")));
    let out = ferry(&lab, &["rule", "list"]);
    assert!(
        stdout(&out).contains("p1, p2 must run apart"),
        "{}",
        stdout(&out)
    );
}
