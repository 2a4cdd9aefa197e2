//! `holistream healthcheck`: asks a running `serve` for `/healthz`, for the
//! container's `HEALTHCHECK` (the slim runtime image has no curl).
//!
//! Plain HTTP/1.0 over a std `TcpStream`: one request on loopback needs no
//! async runtime and no HTTP client.
//!
//! Must not load the model or the configuration: it only asks the running
//! server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Flags of `holistream healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// Port of the server to check (the server's own `HOLISTREAM_PORT`).
    #[arg(long, env = "HOLISTREAM_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Host to connect to.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Bound on connecting and on the answer, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Why the server is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("/healthz answered {0:?}")]
    Status(String),
}

/// Succeeds when `GET /healthz` answers 200.
pub fn check(args: &HealthcheckArgs) -> Result<(), HealthError> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let target = format!("{}:{}", args.host, args.port);
    let addr = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| HealthError::Resolve(target.clone()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HealthError::Connect { addr, source })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {target}\r\n\r\n")?;
    // The status line is all we need; bound what we read.
    let mut head = Vec::with_capacity(64);
    stream.take(256).read_to_end(&mut head)?;
    let status = String::from_utf8_lossy(&head);
    let status = status.lines().next().unwrap_or_default().trim().to_string();
    let code = status.split_whitespace().nth(1);
    if code == Some("200") {
        Ok(())
    } else {
        Err(HealthError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request first: closing with unread bytes makes
            // the kernel send a reset instead of our answer.
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /healthz HTTP/1.0\r\n"));
            s.write_all(answer.as_bytes()).unwrap();
        });
        port
    }

    fn args(port: u16) -> HealthcheckArgs {
        HealthcheckArgs {
            port,
            host: "127.0.0.1".into(),
            timeout_ms: 2000,
        }
    }

    #[test]
    fn ok_on_200_only() {
        let port = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        check(&args(port)).unwrap();
        let port = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = check(&args(port)).unwrap_err();
        assert!(
            matches!(err, HealthError::Status(ref s) if s.contains("503")),
            "{err}"
        );
    }

    #[test]
    fn refused_connection_is_an_error() {
        // A port that was free a moment ago: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            check(&args(port)),
            Err(HealthError::Connect { .. })
        ));
    }
}
