//! `sluice run --http 127.0.0.1:0`: the port is the kernel's choice, read back from the
//! `serving /metrics` log line, and plain HTTP/1.1 GETs against it (no client library needed
//! for one request per call).

use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;

use super::Sluice;
use super::logs::field;

impl Sluice {
    /// `sluice run PIPELINE --no-watch --http 127.0.0.1:0` with its compiled-plugin cache in
    /// `cache`; returns the process and the address it serves.
    pub fn run_http(pipeline: &Path, cache: &Path) -> (Self, String) {
        let mut sluice = Self::spawn_with(
            [
                OsStr::new("run"),
                pipeline.as_os_str(),
                OsStr::new("--no-watch"),
                OsStr::new("--http"),
                OsStr::new("127.0.0.1:0"),
            ],
            |command| {
                command.env("SLUICE_CACHE_DIR", cache);
            },
        );
        let served = sluice.wait_for_log(&["serving /metrics"], 1);
        let addr = field(&served[0], "addr")
            .expect("the address served")
            .to_owned();
        (sluice, addr)
    }
}

/// `GET http://<addr><path>`: the status code and the body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut http = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        http,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    http.read_to_string(&mut reply).expect("read the reply");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply from {addr}{path}:\n{reply}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    (status, body)
}

/// The value of the series `name{labels}` in Prometheus text, `labels` written as the exporter
/// writes them (`pipeline="p",status="delivered"`; empty for none). None if absent.
pub fn series(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == key).then(|| value.parse().expect("a number after the series"))
    })
}
