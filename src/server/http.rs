//! The HTTP endpoints: HTTP/1.1 on a TCP address, with `GET /metrics` (Prometheus text
//! format), `GET /healthz` (liveness: 200 while berth serves, also while it finishes work
//! a restart interrupted; 503 once it is stopping) and `GET /readyz` (200 when berth
//! answers Probe with ready, else 503). The metrics address serves all three; the health
//! address ([`Routes::Health`]) only the last two, for probes that must work whether or
//! not metrics are collected.
//!
//! hyper (already compiled in for tonic) does the HTTP; this module only routes. A scrape
//! renders on a blocking thread, since measuring volumes touches the filesystem;
//! `/metrics?collect=heap`, the heap counts alone, is answered in place.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::collect::Collector;
use crate::metrics::exposition::CONTENT_TYPE;

/// Connections served at once; more are closed at accept. Scrapers hold one or two.
pub const MAX_CONNECTIONS: usize = 32;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address. `:PORT` means every address of both families (one IPv6
/// socket that also takes IPv4, whatever `net.ipv6.bindv6only` says), or every IPv4
/// address where the kernel has no IPv6.
pub async fn bind(address: &str) -> io::Result<TcpListener> {
    let Some(port) = address.strip_prefix(':') else {
        return TcpListener::bind(address).await;
    };
    let port: u16 = port
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{address:?}: the port must be a number")))?;
    match dual_stack(port) {
        Ok(listener) => Ok(listener),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await
        }
        Err(e) => Err(e),
    }
}

fn dual_stack(port: u16) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// What an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics`, `/healthz` and `/readyz` (`--metrics-address`).
    All,
    /// `/healthz` and `/readyz` only (`--health-address`).
    Health,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, collector: Arc<Collector>, routes: Routes) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::debug!("metrics endpoint busy; closing a connection");
            continue;
        };
        let collector = Arc::clone(&collector);
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| respond(req, Arc::clone(&collector), routes));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// Whether a `/metrics` query asks for the heap counts alone (`collect=heap`). Other
/// parameters are ignored, as Prometheus servers do with what they do not know.
fn collects_heap_only(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "collect=heap"))
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

async fn respond(
    req: Request<Incoming>,
    collector: Arc<Collector>,
    routes: Routes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    match routes {
        Routes::All if !matches!(path, "/metrics" | "/healthz" | "/readyz") => {
            return Ok(text(StatusCode::NOT_FOUND, PLAIN, "not found: berth serves /metrics, /healthz and /readyz\n"));
        }
        Routes::Health if !matches!(path, "/healthz" | "/readyz") => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: this health address serves /healthz and /readyz; metrics are on --metrics-address\n",
            ));
        }
        _ => {}
    }
    if req.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET is allowed\n");
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(response);
    }
    // Restarting berth while it finishes interrupted work would only start that work over:
    // alive is not the same as ready.
    match path {
        "/healthz" if collector.registry().stopping() => {
            return Ok(text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "stopping\n"));
        }
        "/healthz" if collector.registry().ready() => return Ok(text(StatusCode::OK, PLAIN, "ok\n")),
        "/healthz" => return Ok(text(StatusCode::OK, PLAIN, "ok: finishing work a restart interrupted\n")),
        "/readyz" if collector.registry().ready() => return Ok(text(StatusCode::OK, PLAIN, "ok\n")),
        "/readyz" => return Ok(text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n")),
        _ => {}
    }
    if collects_heap_only(req.uri().query()) {
        return Ok(text(StatusCode::OK, CONTENT_TYPE, collector.render_heap()));
    }
    Ok(match tokio::task::spawn_blocking(move || collector.render()).await {
        Ok(body) => text(StatusCode::OK, CONTENT_TYPE, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, "rendering metrics failed\n")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn a_bare_port_is_served_on_ipv4_and_ipv6() {
        // Port 0 asks for a free port; both families reach the one listener.
        let listener = bind(":0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let registry = Arc::new(crate::metrics::Registry::default());
        registry.set_ready(true);
        let server = tokio::spawn(serve(listener, Arc::new(Collector::new(registry, None)), Routes::All));
        let close = "Connection: close\r\n\r\n";
        for host in ["127.0.0.1", "[::1]"] {
            let address: std::net::SocketAddr = format!("{host}:{port}").parse().expect("address");
            let answer = get(address, &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{close}")).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
        }
        assert!(bind(":http").await.is_err(), "a port is a number");
        server.abort();
    }

    #[tokio::test]
    async fn routes_metrics_healthz_and_nothing_else() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let registry = Arc::new(crate::metrics::Registry::default());
        let server = tokio::spawn(serve(listener, Arc::new(Collector::new(Arc::clone(&registry), None)), Routes::All));
        let close = "Connection: close\r\n\r\n";

        let metrics = get(address, &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains("content-type: text/plain; version=0.0.4"), "{metrics}");
        let body = metrics.split("\r\n\r\n").nth(1).expect("body");
        crate::metrics::exposition::parse(body).expect("valid exposition text");

        // Starting up (finishing interrupted work): alive, not ready. A liveness probe on
        // /healthz must not restart berth then; /readyz says it cannot serve yet.
        registry.set_ready(false);
        let health = get(address, &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(health.starts_with("HTTP/1.1 200") && health.contains("interrupted"), "{health}");
        let ready = get(address, &format!("GET /readyz HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        registry.set_ready(true);
        for path in ["/healthz", "/readyz"] {
            let answer = get(address, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{close}")).await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
        }

        // The heap counts alone, when the process counts; an empty document when not.
        let heap = get(address, &format!("GET /metrics?collect=heap HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(heap.starts_with("HTTP/1.1 200 OK"), "{heap}");
        let samples = crate::metrics::exposition::parse(heap.split("\r\n\r\n").nth(1).expect("body")).expect("valid");
        assert!(samples.iter().all(|s| s.name.starts_with("berth_heap_")), "{heap}");

        let missing = get(address, &format!("GET /other HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = get(address, &format!("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}")).await;
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("allow: GET"), "{post}");
        let garbage = get(address, "NOT HTTP AT ALL\r\n\r\n").await;
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        server.abort();
    }

    #[tokio::test]
    async fn the_health_address_answers_probes_and_nothing_else() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let registry = Arc::new(crate::metrics::Registry::default());
        let collector = Arc::new(Collector::new(Arc::clone(&registry), None));
        let server = tokio::spawn(serve(listener, collector, Routes::Health));
        let close = "Connection: close\r\n\r\n";
        registry.set_ready(false);
        let health = get(address, &format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let ready = get(address, &format!("GET /readyz HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        let metrics = get(address, &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(metrics.starts_with("HTTP/1.1 404") && metrics.contains("--metrics-address"), "{metrics}");
        server.abort();
    }
}
