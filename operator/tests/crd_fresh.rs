//! The checked-in CRD (crds/ and the chart's template source) must be exactly what the Rust types generate;
//! run `make crds` after changing `operator/src/api.rs`.

use std::path::Path;

#[test]
fn checked_in_crds_match_the_rust_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = ssekeeper_operator::crd::crd_yaml();
    for copy in [
        "crds/ssekeeper.dev_sseservices.yaml",
        "charts/ssekeeper/files/ssekeeper.dev_sseservices.yaml",
    ] {
        let on_disk = std::fs::read_to_string(root.join(copy))
            .unwrap_or_else(|e| panic!("{copy}: {e}; run `make crds`"));
        assert!(on_disk == generated, "{copy} is stale; run `make crds`");
    }
}

#[test]
fn crd_fits_client_side_apply() {
    // `kubectl apply` (client-side) stores the object as JSON in a 256 KiB annotation.
    let json = serde_json::to_string(&ssekeeper_operator::crd::crd()).unwrap();
    assert!(json.len() < 200 * 1024, "CRD JSON is {} bytes", json.len());
}
