//! A real S3-compatible server (moto) on a free loopback port, stopped by
//! PID on drop: what the storage benchmark and the storage tests run against.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use crate::{BenchError, Result};

/// Test credentials the server accepts (moto accepts any).
pub const ACCESS_KEY: &str = "AKIATESTKEYID4WORLDC";
pub const SECRET_KEY: &str = "wc-secret-Zq8vN3xK7pL2sT9e";

pub struct LoopbackS3 {
    child: Child,
    pub endpoint: String,
    pub port: u16,
}

impl LoopbackS3 {
    /// Start `moto_server` on 127.0.0.1 and wait until it listens.
    pub fn start() -> Result<LoopbackS3> {
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BenchError::Io { what: "starting moto_server (install it with `pip install 'moto[server]'`, or `just setup`)".into(), source: e })?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                return Err(BenchError::Failed("moto_server exited before listening".into()));
            };
            if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                break rest.trim().parse::<u16>().map_err(|e| BenchError::Failed(format!("moto_server port in '{line}': {e}")))?;
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LoopbackS3 { child, endpoint: format!("http://127.0.0.1:{port}"), port })
    }

    /// Create a bucket (moto accepts an unsigned PUT).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let io = |e| BenchError::Io { what: format!("creating bucket {name}"), source: e };
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(io)?;
        write!(s, "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port).map_err(io)?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).map_err(io)?;
        if !resp.starts_with("HTTP/1.1 200") {
            return Err(BenchError::Failed(format!("create bucket {name}: {resp}")));
        }
        Ok(())
    }

    /// The environment a worker needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}

impl Drop for LoopbackS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
