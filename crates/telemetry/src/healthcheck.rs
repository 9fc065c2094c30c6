//! `<service> healthcheck`: probes the service's own `/health/ready` on loopback and exits 0
//! when it answers 200, 1 otherwise, so container images need no curl. The port comes from
//! `LISTEN_ADDR` (as the service reads it) or the service's default.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// If the first argument is `healthcheck`, probes and exits; otherwise returns.
pub fn exit_if_requested(default_listen: &str) {
    if std::env::args().nth(1).as_deref() != Some("healthcheck") {
        return;
    }
    let listen = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| default_listen.to_owned());
    match probe(&listen) {
        Ok(()) => std::process::exit(0),
        Err(reason) => {
            eprintln!("not ready: {reason}");
            std::process::exit(1)
        }
    }
}

/// GET /health/ready on the loopback address of `listen`'s port.
pub fn probe(listen: &str) -> Result<(), String> {
    let port = listen
        .parse::<SocketAddr>()
        .map_err(|e| format!("LISTEN_ADDR {listen:?}: {e}"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => Err(format!(
            "/health/ready answered {}",
            String::from_utf8_lossy(status)
        )),
    }
}
