//! Allocations per call. berth counts its heap allocations (`berth_heap_allocations_total`,
//! see `metrics::heap`), and with `--metrics-address` the benchmark reads that count
//! before and after each workload from `/metrics?collect=heap`. The count is the whole
//! process's: with concurrent clients, or work berth does in the background meanwhile (a
//! checkpoint), a figure is the process's allocations over the calls made. The plain
//! HTTP GET it reads with serves the scrape workload too.

use serde_json::{Value, json};

use super::stats::round;
use crate::metrics::exposition;

/// A failure, as text (the bench's errors are messages for its user).
type Error = String;

const COUNTER: &str = "berth_heap_allocations_total";

/// The driver's allocation count, read over HTTP.
pub struct Counter {
    address: String,
    /// What one read costs the driver itself, taken off every measurement.
    read_cost: u64,
}

impl Counter {
    /// A counter of the driver at `address` (HOST:PORT), or `None` when the driver does
    /// not count (it is not berth). A read allocates in the driver too; that cost is
    /// measured here as the smallest difference of reads back to back.
    pub async fn connect(address: &str) -> Result<Option<Counter>, Error> {
        let mut counter = Counter { address: address.to_string(), read_cost: 0 };
        let Some(mut last) = counter.try_read().await? else { return Ok(None) };
        let mut cost = u64::MAX;
        for _ in 0..4 {
            let now = counter.read().await?;
            cost = cost.min(now.saturating_sub(last));
            last = now;
        }
        counter.read_cost = cost;
        Ok(Some(counter))
    }

    async fn try_read(&self) -> Result<Option<u64>, Error> {
        let answer = http_get(&self.address, "/metrics?collect=heap").await?;
        let text = String::from_utf8_lossy(&answer);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let samples = exposition::parse(body).map_err(|e| format!("{}/metrics?collect=heap: {e}", self.address))?;
        Ok(samples.iter().find(|s| s.name == COUNTER).map(|s| s.value as u64))
    }

    /// The count now.
    pub async fn read(&self) -> Result<u64, Error> {
        self.try_read().await?.ok_or_else(|| format!("{} stopped reporting {COUNTER}", self.address))
    }

    /// Allocations since `before` (a [`Counter::read`]), less what the reads cost.
    pub async fn since(&self, before: u64) -> Result<u64, Error> {
        Ok(self.read().await?.saturating_sub(before).saturating_sub(self.read_cost))
    }
}

/// GETs `path` from `address` (HOST:PORT) on a connection of its own; the whole answer,
/// which must be a 200.
pub async fn http_get(address: &str, path: &str) -> Result<Vec<u8>, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| format!("connecting to {address}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("asking {address}: {e}"))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.map_err(|e| format!("reading from {address}: {e}"))?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        let text = String::from_utf8_lossy(&answer);
        return Err(format!("{address}{path} answered {}", text.lines().next().unwrap_or("nothing")));
    }
    Ok(answer)
}

/// How a workload's allocations are reported: the total over `calls` CSI calls (or
/// scrapes), the mean per call, and per kind of call where it was measured on its own.
#[must_use]
pub fn summary(total: u64, calls: usize, by_call: &[(&str, f64)]) -> Value {
    let per_call = if calls == 0 { 0.0 } else { total as f64 / calls as f64 };
    let by_call: serde_json::Map<String, Value> =
        by_call.iter().map(|(c, n)| (c.to_string(), json!(round(*n)))).collect();
    json!({ "total": total, "calls": calls, "per_call": round(per_call), "by_call": by_call })
}
