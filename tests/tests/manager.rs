//! AsyncConnectionManager against real PostgreSQL: pools per tenant, metrics, isolation between
//! tenants, and a circuit breaker that fails fast while the database is down and recovers when
//! it is back (the "database" here is PostgreSQL behind a TCP forwarder the test switches off).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use trellis_host::{ConnectionManager, ManagerError, ManagerPoolConfig};
use trellis_host::{DatabaseTarget, parse_database_url};
use trellis_host::{ErrorKind, Fetch, Params};
use trellis_tests::TestDb;

fn small() -> ManagerPoolConfig {
    ManagerPoolConfig {
        min_size: 1,
        max_size: 2,
        connection_timeout: Duration::from_millis(500),
        ..ManagerPoolConfig::default()
    }
}

#[tokio::test]
async fn pools_per_tenant_with_metrics() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let target = parse_database_url(&url).unwrap();
    let manager = ConnectionManager::new();
    for tenant in ["tenant1", "tenant1", "tenant2"] {
        let lease = manager
            .get_connection(tenant, &target, &small())
            .await
            .unwrap();
        let out = lease
            .execute("SELECT 1 AS one", &Params::None, Fetch::One)
            .await
            .unwrap();
        assert_eq!(out.rows[0]["one"], json!(1));
    }
    let all = manager.metrics(None);
    assert_eq!(all.len(), 2, "{all:?}");
    let t1 = manager.metrics(Some("tenant1"));
    let (key, m) = t1.iter().next().unwrap();
    assert_eq!(key, &format!("tenant1/{target}"));
    assert!(!key.contains("password"));
    assert_eq!(m.total_requests, 2, "the first request is counted");
    assert_eq!(m.failed_requests, 0);
    assert_eq!(m.active_connections, 0);
    assert!(m.idle_connections >= 1);
    assert!(m.avg_wait_time >= 0.0);
    assert!(m.is_healthy);
    manager.close().await;
}

#[tokio::test]
async fn a_saturated_tenant_does_not_slow_another() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let target = parse_database_url(&url).unwrap();
    let manager = Arc::new(ConnectionManager::new());
    // Tenant A holds both of its connections, and more callers queue behind them.
    let a1 = manager
        .get_connection("a", &target, &small())
        .await
        .unwrap();
    let a2 = manager
        .get_connection("a", &target, &small())
        .await
        .unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        let (m, t) = (manager.clone(), target.clone());
        queued.push(tokio::spawn(async move {
            m.get_connection("a", &t, &small()).await.map(drop)
        }));
    }
    // Tenant B is served at once.
    let started = Instant::now();
    let b = manager
        .get_connection("b", &target, &small())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(250),
        "tenant b waited {waited:?} behind tenant a"
    );
    drop(b);
    for q in queued {
        let err = q.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PoolExhausted, "{err}");
    }
    drop((a1, a2));
    assert_eq!(
        manager
            .metrics(Some("a"))
            .values()
            .next()
            .unwrap()
            .failed_requests,
        4
    );
    manager.close().await;
}

/// Forwards TCP connections to `upstream` while `up` is set; refuses them otherwise.
async fn forwarder(upstream: SocketAddr, up: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !up.load(Ordering::SeqCst) {
                drop(client); // the server is "down": the handshake fails
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn circuit_opens_while_the_database_is_down_and_closes_when_it_returns() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let DatabaseTarget::Server {
        kind,
        host,
        port,
        database,
        user,
        password,
        tls,
    } = parse_database_url(&url).unwrap()
    else {
        panic!("not a server URL")
    };
    let upstream: SocketAddr = format!("{host}:{port}").parse().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let proxy = forwarder(upstream, up.clone()).await;
    let target = DatabaseTarget::Server {
        kind,
        host: proxy.ip().to_string(),
        port: proxy.port(),
        database,
        user,
        password,
        tls,
    };
    let manager = ConnectionManager::new();
    // Down: each request fails fast with a connection error, then the circuit opens.
    for _ in 0..3 {
        let started = Instant::now();
        let err = manager
            .get_connection("t", &target, &small())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let err = manager
        .get_connection("t", &target, &small())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::CircuitOpen { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "open circuit answers at once"
    );
    assert!(err.to_string().contains("circuit open"), "{err}");
    assert!(
        !manager
            .metrics(Some("t"))
            .values()
            .next()
            .unwrap()
            .is_healthy
    );
    // Back up: after the cool-down the trial request goes through and the circuit closes.
    up.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        match manager.get_connection("t", &target, &small()).await {
            Ok(lease) => break lease,
            Err(ManagerError::CircuitOpen { retry_in, .. }) => {
                assert!(Instant::now() < deadline, "circuit never closed");
                tokio::time::sleep(retry_in + Duration::from_millis(10)).await;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    };
    let out = lease
        .execute("SELECT 1 AS one", &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["one"], json!(1));
    drop(lease);
    assert!(
        manager
            .metrics(Some("t"))
            .values()
            .next()
            .unwrap()
            .is_healthy
    );
    manager.close().await;
}
