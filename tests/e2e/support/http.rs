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
    /// `sluice run PIPELINES... --no-watch --http 127.0.0.1:0` with its compiled-plugin cache
    /// in `cache`; returns the process and the address it serves.
    pub fn run_http(pipelines: &[&Path], cache: &Path) -> (Self, String) {
        let args = std::iter::once(OsStr::new("run"))
            .chain(pipelines.iter().map(|p| p.as_os_str()))
            .chain(["--no-watch", "--http", "127.0.0.1:0"].map(OsStr::new));
        let mut sluice = Self::spawn_with(args, |command| {
            command.env("SLUICE_CACHE_DIR", cache);
        });
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

/// `GET /ready`: the status code and the JSON body.
pub fn ready(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/ready");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/ready answered {status} with no JSON ({e}):\n{body}"));
    (status, json)
}

/// The `/ready` entry of pipeline `name`, if reported.
pub fn pipeline_readiness<'a>(
    json: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    json["pipelines"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// The reasons `/ready` gives for pipeline `name` (`redis_unreachable`, ...).
pub fn reasons(json: &serde_json::Value, name: &str) -> Vec<String> {
    pipeline_readiness(json, name)
        .and_then(|p| p["reasons"].as_array())
        .map(|r| {
            r.iter()
                .map(|o| o["reason"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
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
