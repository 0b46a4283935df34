//! `/healthz` and `/readyz` for the kubelet's probes of the operator pod: it is alive while
//! it serves, and ready once it runs (a passive, waiting operator is ready too: it holds no
//! Database and waits for the Lease).

use axum::Router;
use axum::routing::get;

/// Serves the probes on `port` (all addresses) until the process ends.
pub async fn serve(port: u16) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    axum::serve(listener, app).await
}
