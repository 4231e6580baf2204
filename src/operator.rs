//! The operator process: probes and metrics over HTTP, leader election, and
//! the controllers, which run only while this replica holds the Lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::reconcile::{self, Context};

#[derive(Clone, Debug)]
pub struct Options {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Lease to hold, as `namespace/name`; no election when `None`.
    pub lease: Option<(String, String)>,
    pub identity: String,
    pub http: SocketAddr,
    /// Migrations allowed to be in flight at once; no limit when `None`.
    pub max_concurrent_migrations: Option<usize>,
    /// Controller images a migration may name beyond the sidecar's own
    /// repository (`*` and `?` patterns).
    pub allowed_controller_images: Vec<String>,
}

/// What the probes report.
#[derive(Default)]
pub struct Probes {
    /// Every watch has listed its objects once (or this replica stands by).
    ready: AtomicBool,
}

pub async fn run(config: kube::Config, opts: Options) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.http).await?;
    // Watches hold a connection each for minutes (kube-client speaks
    // HTTP/1.1): with a pool of their own, a watch that (re)starts never
    // takes the idle connection the next write would reuse, and the write
    // never waits for a new TLS handshake.
    let watches = reconcile::client(config.clone())?;
    serve_and_run_with(reconcile::client(config)?, watches, opts, listener).await
}

/// [`run`] on a listener already bound (tests bind port 0), with one client.
pub async fn serve_and_run(
    client: Client,
    opts: Options,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    serve_and_run_with(client.clone(), client, opts, listener).await
}

async fn serve_and_run_with(
    client: Client,
    watches: Client,
    opts: Options,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let probes = Arc::new(Probes::default());
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    tokio::spawn(serve(listener, probes.clone(), metrics.clone()));
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Some(opts.identity.clone()),
            metrics,
            reconcile::Slots::new(opts.max_concurrent_migrations),
        )
        .with_policy(crate::plan::Policy {
            allowed_controller_images: opts.allowed_controller_images.clone(),
        })
        .with_watch_client(watches),
    );

    let Some((lease_ns, lease_name)) = opts.lease.clone() else {
        controllers(ctx, &opts.namespaces, &probes).await;
        return Ok(());
    };
    let manager = LeaseManagerBuilder::new(client, lease_name)
        .with_namespace(lease_ns)
        .with_identity(opts.identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is ready: it serves probes and waits for the Lease.
    probes.ready.store(true, Ordering::SeqCst);
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                anyhow::bail!("the lease manager stopped");
            }
        }
        info!(identity = %opts.identity, "holding the Lease: starting the controllers");
        probes.ready.store(false, Ordering::SeqCst);
        let work = controllers(ctx.clone(), &opts.namespaces, &probes);
        tokio::select! {
            _ = work => {
                info!("controllers stopped: shutting down");
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
            // Losing the Lease stops every write at once: the controllers'
            // futures are dropped mid-flight.
            _ = wait_until_lost(&mut leader) => {
                warn!("lost the Lease: stopped the controllers");
                probes.ready.store(true, Ordering::SeqCst);
            }
        }
    }
}

async fn wait_until_lost(leader: &mut tokio::sync::watch::Receiver<bool>) {
    while *leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            return;
        }
    }
}

async fn controllers(ctx: Arc<Context>, namespaces: &[String], probes: &Arc<Probes>) {
    let synced = {
        let probes = probes.clone();
        move || probes.ready.store(true, Ordering::SeqCst)
    };
    if namespaces.is_empty() {
        reconcile::run(ctx, None, synced).await;
    } else {
        // One controller a namespace; ready once all of them have synced.
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(namespaces.len()));
        let runs = namespaces.iter().map(|ns| {
            let pending = pending.clone();
            let synced = synced.clone();
            reconcile::run(ctx.clone(), Some(ns.clone()), move || {
                if pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                    synced();
                }
            })
        });
        futures::future::join_all(runs).await;
    }
}

async fn serve(listener: tokio::net::TcpListener, probes: Arc<Probes>, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Arc<Probes>>| async move {
                if p.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "watches not synced")
                }
            }),
        )
        .with_state(probes)
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "HTTP server stopped");
    }
}
