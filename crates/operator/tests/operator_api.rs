//! The operator against a real API server (`shared/kube`: kube-apiserver with RBAC and
//! kube-controller-manager, no kubelet, so pods stay Pending), running on the token of the
//! ServiceAccount `stator install` creates, so the shipped RBAC is what is tested.
//!
//! Waits poll the API server until what is awaited holds; the bound only stops a hung test and
//! says what never happened (no timing is asserted).

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use stator_api::Database;
use stator_kubelet_standin::harness::{ControlPlane, missing_binary};
use stator_operator::lease::Election;

mod support;

use support::*;

fn database(name: &str, instances: u32, reclaim: Option<&str>) -> serde_json::Value {
    let mut storage = serde_json::json!({"size": "1Gi"});
    if let Some(r) = reclaim {
        storage["reclaim"] = r.into();
    }
    serde_json::json!({
        "apiVersion": "stator.dev/v1alpha1", "kind": "Database",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"engine": "postgres", "instances": instances, "storage": storage},
    })
}

fn condition(db: &Database, kind: &str) -> Option<String> {
    db.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_databases_on_a_real_api_server_with_its_own_rbac() {
    if let Some(why) = missing_binary() {
        panic!("the control plane cannot run here: {why}");
    }
    let cp = ControlPlane::start();
    kubectl(
        &cp,
        &[
            "apply",
            "--server-side",
            "-k",
            repo().join("deploy").to_str().unwrap(),
        ],
    );
    kubectl(
        &cp,
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/databases.stator.dev",
            "--timeout=60s",
        ],
    );
    kubectl(&cp, &["create", "namespace", "apps"]);
    let op = client_of(&operator_kubeconfig(&cp)).await;
    let operator = tokio::spawn(stator_operator::run(op.clone(), options("op-a")));

    // A second operator stays passive while the first renews: it never wins the Lease.
    let leases: Api<Lease> = Api::namespaced(op.clone(), NS);
    until("op-a holds the Lease", || async {
        let l = leases
            .get_opt(stator_kube::install::LEASE_NAME)
            .await
            .ok()??;
        (l.spec?.holder_identity.as_deref() == Some("op-a")).then_some(())
    })
    .await;
    let mut second = Election::new(
        leases.clone(),
        stator_kube::install::LEASE_NAME,
        "op-b",
        Duration::from_secs(15),
    );
    for _ in 0..3 {
        assert!(
            !second.round().await.expect("a round"),
            "a second operator took the Lease of a live one"
        );
    }

    // The user's side (admin) applies Databases; the operator reads them with its token.
    let admin_dbs: Api<Database> = Api::namespaced(op.clone(), "apps"); // reads only
    let apply = |value: serde_json::Value| {
        let path = cp.dir().join("db.json");
        std::fs::write(&path, value.to_string()).unwrap();
        kubectl(
            &cp,
            &["apply", "--server-side", "-f", path.to_str().unwrap()],
        );
    };
    apply(database("pg", 3, None));
    let db = until(
        "pg reconciled: SpecValid and Progressing, observedGeneration 1",
        || async {
            let db = admin_dbs.get("pg").await.ok()?;
            let s = db.status.as_ref()?;
            (s.observed_generation == Some(1)
                && condition(&db, "SpecValid").as_deref() == Some("True")
                && condition(&db, "Progressing").as_deref() == Some("True"))
            .then_some(db)
        },
    )
    .await;
    assert!(
        db.finalizers()
            .contains(&stator_operator::FINALIZER.to_string())
    );
    let uid = db.uid().unwrap();
    let owned = |meta: &kube::api::ObjectMeta| {
        meta.owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.uid == uid && r.controller == Some(true)))
    };
    let sts: Api<StatefulSet> = Api::namespaced(op.clone(), "apps");
    let svcs: Api<Service> = Api::namespaced(op.clone(), "apps");
    let cms: Api<ConfigMap> = Api::namespaced(op.clone(), "apps");
    let secrets: Api<Secret> = Api::namespaced(op.clone(), "apps");
    assert!(owned(&sts.get("pg").await.unwrap().metadata));
    for name in ["pg-headless", "pg-rw", "pg-ro"] {
        assert!(owned(&svcs.get(name).await.unwrap().metadata), "{name}");
    }
    assert!(owned(&cms.get("pg-config").await.unwrap().metadata));
    let secret = secrets.get("pg-credentials").await.unwrap();
    assert!(owned(&secret.metadata));
    let secret_version = secret.resource_version();

    // A spec change: observedGeneration follows; the Secret is not rewritten.
    apply(database("pg", 2, None));
    until("observedGeneration 2 after the spec change", || async {
        let db = admin_dbs.get("pg").await.ok()?;
        (db.status?.observed_generation == Some(2)).then_some(())
    })
    .await;
    assert_eq!(sts.get("pg").await.unwrap().spec.unwrap().replicas, Some(2));
    assert_eq!(
        secrets
            .get("pg-credentials")
            .await
            .unwrap()
            .resource_version(),
        secret_version
    );
    // No secret value in the status.
    let status = serde_json::to_string(&admin_dbs.get("pg").await.unwrap().status).unwrap();
    let data = secret.data.unwrap_or_default();
    for (key, value) in &data {
        let value = String::from_utf8_lossy(&value.0);
        assert!(!status.contains(value.as_ref()), "status carries {key}");
    }

    // An invalid spec: SpecValid=False and a Warning Event.
    let long = "a".repeat(60);
    apply(database(&long, 1, None));
    until("SpecValid=False on the invalid Database", || async {
        let db = admin_dbs.get(&long).await.ok()?;
        (condition(&db, "SpecValid").as_deref() == Some("False")).then_some(())
    })
    .await;
    // The operator may create Events but not read them: read as the admin.
    until("a Warning Event about the invalid spec", || async {
        let out = kubectl(
            &cp,
            &["get", "events.events.k8s.io", "-n", "apps", "-o", "json"],
        );
        let list: serde_json::Value = serde_json::from_str(&out).ok()?;
        list["items"]
            .as_array()?
            .iter()
            .any(|e| {
                e["type"] == "Warning"
                    && e["regarding"]["name"] == long.as_str()
                    && e["reason"] == "InvalidSpec"
            })
            .then_some(())
    })
    .await;

    // Deleted: the finalizer runs, owned objects go (garbage collector), PVCs stay.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(op.clone(), "apps");
    let claims = until("the StatefulSet controller made the PVCs", || async {
        let list = pvcs
            .list(&ListParams::default().labels("stator.dev/database=pg"))
            .await
            .ok()?;
        (list.items.len() >= 2).then_some(list.items.len())
    })
    .await;
    kubectl(
        &cp,
        &["delete", "database", "pg", "-n", "apps", "--wait=false"],
    );
    until("the Database is gone (finalizer removed)", || async {
        admin_dbs.get_opt("pg").await.ok()?.is_none().then_some(())
    })
    .await;
    until("owned objects are gone", || async {
        let s = sts.get_opt("pg").await.ok()?;
        let c = cms.get_opt("pg-config").await.ok()?;
        (s.is_none() && c.is_none()).then_some(())
    })
    .await;
    let kept = pvcs
        .list(&ListParams::default().labels("stator.dev/database=pg"))
        .await
        .unwrap();
    assert_eq!(
        kept.items.len(),
        claims,
        "PVCs were deleted without spec.storage.reclaim: Delete"
    );

    // reclaim: Delete deletes them.
    apply(database("gone", 1, Some("Delete")));
    until("the StatefulSet controller made gone's PVC", || async {
        let list = pvcs
            .list(&ListParams::default().labels("stator.dev/database=gone"))
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(())
    })
    .await;
    kubectl(
        &cp,
        &["delete", "database", "gone", "-n", "apps", "--wait=false"],
    );
    until("gone's PVCs deleted (reclaim: Delete)", || async {
        let list = pvcs
            .list(&ListParams::default().labels("stator.dev/database=gone"))
            .await
            .ok()?;
        list.items
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;

    // spec.tls.issuerRef: the operator applies cert-manager's Certificates (the CRD fixture
    // stands in for cert-manager) and issues no NAME-tls of its own; cert-manager fills it.
    kubectl(
        &cp,
        &[
            "apply",
            "--server-side",
            "-f",
            repo()
                .join("tests/fixtures/cert-manager/certificates.crd.yaml")
                .to_str()
                .unwrap(),
        ],
    );
    kubectl(
        &cp,
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/certificates.cert-manager.io",
            "--timeout=60s",
        ],
    );
    let mut issued = database("certs", 1, None);
    issued["spec"]["tls"] =
        serde_json::json!({"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}});
    apply(issued);
    let names = until("the Certificates of certs", || async {
        let out = kubectl(&cp, &["get", "certificates", "-n", "apps", "-o", "name"]);
        (out.lines().count() == 2).then_some(out)
    })
    .await;
    assert!(
        names.contains("certificate.cert-manager.io/certs-tls"),
        "{names}"
    );
    assert!(
        names.contains("certificate.cert-manager.io/certs-replication-tls"),
        "{names}"
    );
    until("certs' StatefulSet", || async {
        sts.get_opt("certs").await.ok()?
    })
    .await;
    assert!(
        secrets.get_opt("certs-tls").await.unwrap().is_none(),
        "the operator issued certs-tls itself"
    );
    operator.abort();
}
