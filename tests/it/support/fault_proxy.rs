//! A loopback HTTP proxy in front of the S3 test server that fails a share
//! of the requests, as a flaky network and an overloaded object store do:
//!
//! - **503**: answered `503 Slow Down` without reaching the server;
//! - **cut**: forwarded, the server acts on it (a put is stored, a
//!   create-only put takes the name), and the connection is closed before
//!   the client sees the response.
//!
//! The first create-only put (`If-None-Match: *`, a commit's manifest) is
//! always cut, so every run covers a commit whose answer was lost.
//!
//! One request per connection (the proxy answers `Connection: close`), so
//! the client's pool reconnects for every request and each one is decided
//! on its own. The choice is seeded: a run fails the same requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the proxy did, by kind.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub forwarded: AtomicU64,
    pub failed_503: AtomicU64,
    pub cut_after_acting: AtomicU64,
    /// Of those cut, create-only puts (`If-None-Match: *`: commit manifests).
    pub cut_create_only: AtomicU64,
    /// Whether the first create-only put was cut yet.
    first_create_only_cut: std::sync::atomic::AtomicBool,
}

impl FaultCounts {
    /// (forwarded, 503, cut, of which create-only puts).
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        (get(&self.forwarded), get(&self.failed_503), get(&self.cut_after_acting), get(&self.cut_create_only))
    }
}

/// A running proxy; it stops with the test process.
pub struct FaultProxy {
    pub endpoint: String,
    pub counts: Arc<FaultCounts>,
}

impl FaultProxy {
    /// Proxy to `upstream_port` on loopback, failing `share` of the requests
    /// (half as 503s, half cut after the server acted).
    pub fn start(upstream_port: u16, share: f64, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(FaultCounts::default());
        let c = counts.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            for client in listener.incoming().flatten() {
                n += 1;
                // SplitMix64 of (seed, request number): a uniform draw in [0, 1).
                let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
                let fault = if u < share / 2.0 {
                    Fault::Unavailable
                } else if u < share {
                    Fault::CutAfterActing
                } else {
                    Fault::None
                };
                let c = c.clone();
                std::thread::spawn(move || {
                    let _ = handle(client, upstream_port, fault, &c);
                });
            }
        });
        FaultProxy { endpoint, counts }
    }
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    Unavailable,
    CutAfterActing,
}

/// Read one request (head and Content-Length body), then answer it as
/// `fault` says.
fn handle(client: TcpStream, upstream_port: u16, mut fault: Fault, counts: &FaultCounts) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut create_only = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        create_only |= lower.starts_with("if-none-match:");
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    if create_only && !counts.first_create_only_cut.swap(true, Ordering::SeqCst) {
        fault = Fault::CutAfterActing;
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let mut client = client;
    if let Fault::Unavailable = fault {
        counts.failed_503.fetch_add(1, Ordering::SeqCst);
        let msg = "<Error><Code>SlowDown</Code><Message>injected fault</Message></Error>";
        write!(client, "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len())?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port))?;
    upstream.write_all(&head)?;
    upstream.write_all(&body)?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response)?;
    if let Fault::CutAfterActing = fault {
        // The server acted; the client never hears of it.
        counts.cut_after_acting.fetch_add(1, Ordering::SeqCst);
        if create_only {
            counts.cut_create_only.fetch_add(1, Ordering::SeqCst);
        }
        return client.shutdown(std::net::Shutdown::Both);
    }
    counts.forwarded.fetch_add(1, Ordering::SeqCst);
    client.write_all(&response)?;
    client.shutdown(std::net::Shutdown::Both)
}
