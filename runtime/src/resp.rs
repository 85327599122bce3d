//! The hot paths on RESP2 connections of their own: a stream source's XACK
//! and XREADGROUP of every batch, and a stream sink's pipelined XADDs, each
//! in one write, replies read element by element off a buffered socket
//! (entries straight into messages).
//!
//! redis-rs parses every reply into a `Value` tree through a general
//! parser-combinator: about a third of the runtime's CPU per message on
//! these paths (perf, 100 B entries, batch 256). Everything else (XPENDING,
//! leases, group creation, scripts, dead letters) and every cluster or TLS
//! connection stays on redis-rs. Error replies become redis-rs's own errors,
//! so codes (NOGROUP, OOM) and outage handling read the same either way.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisError, RedisResult};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::conn::{self, Client};
use crate::message::Field;
use crate::source::stream::{Entry, entry};

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Duplex for T {}

type Io = BufReader<Box<dyn Duplex>>;

/// The most items reserved ahead on a count read from the wire.
const RESERVE_MAX: usize = 4096;

/// A lazily (re)connected session. Any failure other than an error reply
/// drops the connection, and the next call opens a new one: a reply cut
/// short leaves nothing to resynchronise.
pub struct Session {
    info: ConnectionInfo,
    /// Longest wait for a whole exchange; must exceed any BLOCK.
    timeout: Duration,
    io: Option<Io>,
    out: Vec<u8>,
    line: Vec<u8>,
}

/// Idle sessions to one server, for a sink shared by a pipeline's
/// consumers: a write takes one (a new one when none is idle) and gives it
/// back, so concurrent writes never wait for each other's round trips.
pub struct Pool {
    template: Box<Session>,
    idle: std::sync::Mutex<Vec<Session>>,
}

impl Pool {
    /// A pool for a plain TCP or Unix-socket server; `None` for anything
    /// else (see [`Session::new`]).
    pub fn new(client: &Client, timeout: Duration) -> Option<Self> {
        Some(Pool {
            template: Box::new(Session::new(client, timeout)?),
            idle: Default::default(),
        })
    }

    /// An idle session, or a new one (it connects on first use).
    pub fn take(&self) -> Session {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        idle.unwrap_or_else(|| Session::to(self.template.info.clone(), self.template.timeout))
    }

    /// Gives a session back for the next write.
    pub fn give_back(&self, session: Session) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(session);
    }
}

/// Why an exchange failed: an error reply leaves the connection usable;
/// anything else does not.
enum Fail {
    Reply(RedisError),
    Broken(RedisError),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Broken(e.into())
    }
}

fn protocol(what: &str) -> Fail {
    Fail::Broken(
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply: {what}"),
        )
        .into(),
    )
}

impl Session {
    /// A session for a plain TCP or Unix-socket server; `None` for anything
    /// else (a cluster, TLS), which stays on redis-rs.
    pub fn new(client: &Client, timeout: Duration) -> Option<Self> {
        let Client::Single(client) = client else {
            return None;
        };
        let info = client.get_connection_info().clone();
        match info.addr() {
            ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => {}
            _ => return None,
        }
        Some(Session::to(info, timeout))
    }

    fn to(info: ConnectionInfo, timeout: Duration) -> Self {
        Session {
            info,
            timeout,
            io: None,
            out: Vec::with_capacity(4096),
            line: Vec::with_capacity(64),
        }
    }

    /// `XACK stream group acks...` when there are acks, then `XREADGROUP
    /// GROUP group consumer COUNT count [BLOCK ms] STREAMS stream id`, in
    /// one write; the entries read. The first error reply of the two is the
    /// error, as a redis-rs pipeline reports it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ack_and_read(
        &mut self,
        stream: &Arc<str>,
        group: &str,
        consumer: &str,
        count: u32,
        block_ms: Option<u64>,
        id: &str,
        acks: &[String],
    ) -> RedisResult<Vec<Entry>> {
        self.out.clear();
        if !acks.is_empty() {
            array(&mut self.out, 3 + acks.len());
            bulk(&mut self.out, b"XACK");
            bulk(&mut self.out, stream.as_bytes());
            bulk(&mut self.out, group.as_bytes());
            for id in acks {
                bulk(&mut self.out, id.as_bytes());
            }
        }
        let count = count.to_string();
        let block = block_ms.map(|ms| ms.to_string());
        array(&mut self.out, 9 + if block.is_some() { 2 } else { 0 });
        for arg in [
            &b"XREADGROUP"[..],
            b"GROUP",
            group.as_bytes(),
            consumer.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ] {
            bulk(&mut self.out, arg);
        }
        if let Some(block) = &block {
            bulk(&mut self.out, b"BLOCK");
            bulk(&mut self.out, block.as_bytes());
        }
        for arg in [&b"STREAMS"[..], stream.as_bytes(), id.as_bytes()] {
            bulk(&mut self.out, arg);
        }
        let acked = !acks.is_empty();
        let result = tokio::time::timeout(self.timeout, async {
            let (io, line) = self.send().await?;
            // Both replies are read whatever they say, so an error reply
            // leaves the connection in step.
            let ack = if acked {
                match header(io, line).await {
                    Ok((b':', _)) => Ok(()),
                    Ok(_) => return Err(protocol("XACK did not answer with a number")),
                    Err(Fail::Reply(e)) => Err(e),
                    Err(broken) => return Err(broken),
                }
            } else {
                Ok(())
            };
            match (ack, read_entries(io, line, stream).await) {
                (Err(e), Ok(_) | Err(Fail::Reply(_))) => Err(Fail::Reply(e)),
                (_, entries) => entries,
            }
        })
        .await;
        self.finish(result)
    }

    /// `XADD stream [MAXLEN ~ maxlen] * field value ...` for each entry, in
    /// one write. Per entry: written, or the error reply (OOM, WRONGTYPE);
    /// the outer error is the exchange's own (Redis unreachable), after
    /// which any of them may or may not have been written.
    pub(crate) async fn xadd_all<'a, F>(
        &mut self,
        stream: &str,
        maxlen: Option<u64>,
        entries: &[F],
    ) -> RedisResult<Vec<RedisResult<()>>>
    where
        F: Iterator<Item = &'a Field> + Clone,
    {
        self.out.clear();
        let maxlen = maxlen.map(|m| m.to_string());
        for fields in entries {
            let trim = if maxlen.is_some() { 3 } else { 0 };
            array(&mut self.out, 3 + trim + 2 * fields.clone().count());
            bulk(&mut self.out, b"XADD");
            bulk(&mut self.out, stream.as_bytes());
            if let Some(maxlen) = &maxlen {
                bulk(&mut self.out, b"MAXLEN");
                bulk(&mut self.out, b"~");
                bulk(&mut self.out, maxlen.as_bytes());
            }
            bulk(&mut self.out, b"*");
            for (name, value) in fields.clone() {
                bulk(&mut self.out, name);
                bulk(&mut self.out, value);
            }
        }
        let result = tokio::time::timeout(self.timeout, async {
            let (io, line) = self.send().await?;
            let mut written = Vec::with_capacity(entries.len());
            for _ in entries {
                written.push(match header(io, line).await {
                    Ok((b'$', n)) if n >= 0 => {
                        skip(io, n as u64).await?;
                        Ok(())
                    }
                    Ok(_) => return Err(protocol("XADD did not answer with an id")),
                    Err(Fail::Reply(e)) => Err(e),
                    Err(broken) => return Err(broken),
                });
            }
            Ok(written)
        })
        .await;
        self.finish(result)
    }

    /// Writes what was encoded, connecting first if need be; the connection
    /// to read the replies from.
    async fn send(&mut self) -> Result<(&mut Io, &mut Vec<u8>), Fail> {
        if self.io.is_none() {
            self.io = Some(self.connect().await?);
        }
        let io = self.io.as_mut().expect("connected above");
        io.get_mut().write_all(&self.out).await?;
        Ok((io, &mut self.line))
    }

    /// The exchange's result; a connection that failed or ran out of time
    /// is dropped, so the next exchange starts on a new one.
    fn finish<T>(
        &mut self,
        result: Result<Result<T, Fail>, tokio::time::error::Elapsed>,
    ) -> RedisResult<T> {
        let result = result.unwrap_or_else(|_| {
            Err(Fail::Broken(
                io::Error::new(io::ErrorKind::TimedOut, "no reply from Redis in time").into(),
            ))
        });
        match result {
            Ok(value) => Ok(value),
            Err(Fail::Reply(e)) => Err(e),
            Err(Fail::Broken(e)) => {
                self.io = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Io, Fail> {
        let open = async {
            let io: Box<dyn Duplex> = match self.info.addr() {
                ConnectionAddr::Tcp(host, port) => {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    tcp.set_nodelay(true)?;
                    Box::new(tcp)
                }
                ConnectionAddr::Unix(path) => {
                    Box::new(tokio::net::UnixStream::connect(path).await?)
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "not a TCP or Unix address",
                    ));
                }
            };
            Ok(io)
        };
        let io = match tokio::time::timeout(conn::CONNECT_TIMEOUT, open).await {
            Ok(io) => io?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connecting to Redis timed out",
                )
                .into());
            }
        };
        let mut io = BufReader::with_capacity(64 << 10, io);
        let settings = self.info.redis_settings();
        let mut out = Vec::new();
        let mut replies = 0;
        if let Some(password) = settings.password() {
            let mut args = vec![&b"AUTH"[..]];
            args.extend(settings.username().map(str::as_bytes));
            args.push(password.as_bytes());
            command(&mut out, &args);
            replies += 1;
        }
        if settings.db() != 0 {
            command(&mut out, &[b"SELECT", settings.db().to_string().as_bytes()]);
            replies += 1;
        }
        if replies > 0 {
            io.get_mut().write_all(&out).await?;
            let mut line = Vec::new();
            for _ in 0..replies {
                match header(&mut io, &mut line).await {
                    Ok((b'+', _)) => {}
                    Ok(_) => return Err(protocol("AUTH or SELECT did not answer OK")),
                    // A refused AUTH or SELECT: nothing will work on this connection.
                    Err(Fail::Reply(e)) | Err(Fail::Broken(e)) => return Err(Fail::Broken(e)),
                }
            }
        }
        Ok(io)
    }
}

/// An XREADGROUP reply for one stream: nil when BLOCK ran out, else
/// `[[key, [[id, [field, value, ...] | nil], ...]]]`.
async fn read_entries(
    io: &mut Io,
    line: &mut Vec<u8>,
    stream: &Arc<str>,
) -> Result<Vec<Entry>, Fail> {
    let streams = expect(io, line, b'*').await?;
    let mut entries = Vec::new();
    for _ in 0..streams.max(0) {
        if expect(io, line, b'*').await? != 2 {
            return Err(protocol("a stream is not [key, entries]"));
        }
        skip_bulk(io, line).await?;
        let n = expect(io, line, b'*').await?.max(0) as usize;
        // Counts come off the wire: reserve no more than a batch could hold.
        entries.reserve(n.min(RESERVE_MAX));
        for _ in 0..n {
            if expect(io, line, b'*').await? != 2 {
                return Err(protocol("an entry is not [id, fields]"));
            }
            let id = read_bulk(io, line).await?;
            let flat = expect(io, line, b'*').await?;
            let fields = match flat {
                // nil: deleted or trimmed while pending.
                ..0 => None,
                _ => {
                    let mut fields = Vec::with_capacity((flat as usize / 2).min(RESERVE_MAX));
                    for _ in 0..flat / 2 {
                        let name = read_bulk(io, line).await?;
                        fields.push((name, read_bulk(io, line).await?));
                    }
                    if flat % 2 == 1 {
                        skip_bulk(io, line).await?;
                    }
                    Some(fields)
                }
            };
            entries.push(entry(id, fields, stream));
        }
    }
    Ok(entries)
}

/// One reply line: its type byte and the number after it. An error reply
/// becomes redis-rs's error for it, so codes (NOGROUP, OOM) read the same.
async fn header(io: &mut Io, line: &mut Vec<u8>) -> Result<(u8, i64), Fail> {
    line.clear();
    io.read_until(b'\n', line).await?;
    if !line.ends_with(b"\r\n") {
        return Err(Fail::Broken(
            io::Error::from(io::ErrorKind::UnexpectedEof).into(),
        ));
    }
    match line[0] {
        b'-' => Err(Fail::Reply(match redis::parse_redis_value(line) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            _ => return Err(protocol("an error reply that does not parse")),
        })),
        b'+' => Ok((b'+', 0)),
        kind => {
            let digits = &line[1..line.len() - 2];
            let (negative, digits) = match digits.split_first() {
                Some((b'-', rest)) => (true, rest),
                _ => (false, digits),
            };
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return Err(protocol("a length or number that is not one"));
            }
            let n = digits
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
            Ok((kind, if negative { -n } else { n }))
        }
    }
}

async fn expect(io: &mut Io, line: &mut Vec<u8>, kind: u8) -> Result<i64, Fail> {
    match header(io, line).await? {
        (got, n) if got == kind => Ok(n),
        _ => Err(protocol("a reply of another type")),
    }
}

async fn read_bulk(io: &mut Io, line: &mut Vec<u8>) -> Result<Vec<u8>, Fail> {
    let len =
        usize::try_from(expect(io, line, b'$').await?).map_err(|_| protocol("a nil string"))?;
    // Read into spare capacity: zeroing it first costs as much as the copy.
    // A length off the wire reserves at most 1 MiB ahead; more grows as read.
    let mut bytes = Vec::with_capacity(len.min(1 << 20));
    (&mut *io).take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    crlf(io).await?;
    Ok(bytes)
}

async fn skip_bulk(io: &mut Io, line: &mut Vec<u8>) -> Result<(), Fail> {
    let len = expect(io, line, b'$').await?.max(0) as u64;
    skip(io, len).await
}

/// Skips a bulk string's `len` bytes and its CRLF.
async fn skip(io: &mut Io, len: u64) -> Result<(), Fail> {
    let skipped = tokio::io::copy(&mut (&mut *io).take(len), &mut tokio::io::sink()).await?;
    if skipped != len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    crlf(io).await
}

async fn crlf(io: &mut Io) -> Result<(), Fail> {
    let mut end = [0; 2];
    io.read_exact(&mut end).await?;
    if &end != b"\r\n" {
        return Err(protocol("a string longer than its length"));
    }
    Ok(())
}

fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array(out, args.len());
    for arg in args {
        bulk(out, arg);
    }
}

fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(bytes.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{has_code, is_outage};
    use crate::embedded::EmbeddedRedis;

    fn ids(entries: &[Entry]) -> Vec<(&str, bool)> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Message(m) => (m.id.as_str(), true),
                Entry::Deleted(id) => (id.as_str(), false),
                Entry::Invalid => ("invalid", false),
            })
            .collect()
    }

    /// Against a real redis-server: the replies a consumer meets (entries,
    /// deleted entries in a history read, nil from BLOCK, error replies) and
    /// a killed connection, which fails one exchange and not the next.
    #[tokio::test]
    async fn reads_acks_writes_and_recovers() {
        let redis = EmbeddedRedis::start().await.expect("redis-server");
        let client = crate::conn::client(redis.url()).expect("a URL");
        let mut admin = redis::Client::open(redis.url())
            .and_then(|c| c.get_connection())
            .expect("connect");
        let mut session = Session::new(&client, Duration::from_secs(5)).expect("TCP");
        let stream: Arc<str> = "in".into();
        let read = async |session: &mut Session, block, id, acks: &[String]| {
            session
                .ack_and_read(&stream, "g", "c", 10, block, id, acks)
                .await
        };

        let e = read(&mut session, None, ">", &[]).await.unwrap_err();
        assert!(has_code(&e, "NOGROUP"), "{e}");

        let fields: Vec<Vec<Field>> = vec![
            vec![(b"payload".to_vec(), b"a".to_vec())],
            vec![
                (b"k".to_vec(), vec![0, 13, 10, 255]),
                (b"e".to_vec(), vec![]),
            ],
            vec![(b"payload".to_vec(), b"c".to_vec())],
        ];
        let entries: Vec<_> = fields.iter().map(|f| f.iter()).collect();
        let written = session.xadd_all("in", None, &entries).await.expect("XADD");
        assert!(written.iter().all(Result::is_ok), "{written:?}");
        let _: () = redis::cmd("XGROUP")
            .arg(&["CREATE", "in", "g", "0"])
            .query(&mut admin)
            .expect("XGROUP CREATE");

        // The error reply above left the connection in step: this is its
        // second exchange.
        let got = read(&mut session, Some(100), ">", &[]).await.expect("read");
        let messages: Vec<&Vec<Field>> = got
            .iter()
            .filter_map(|e| match e {
                Entry::Message(m) => Some(&m.fields),
                _ => None,
            })
            .collect();
        assert_eq!(messages, fields.iter().collect::<Vec<_>>());
        let all: Vec<String> = ids(&got).iter().map(|(id, _)| id.to_string()).collect();

        // A history read names an entry deleted while pending, with no fields.
        let _: usize = redis::cmd("XDEL")
            .arg("in")
            .arg(&all[1])
            .query(&mut admin)
            .unwrap();
        let got = read(&mut session, None, "0", &[]).await.expect("history");
        assert_eq!(
            ids(&got),
            [
                (all[0].as_str(), true),
                (all[1].as_str(), false),
                (all[2].as_str(), true)
            ]
        );

        // Acks ride with the read, ahead of it: nothing is pending after.
        let got = read(&mut session, None, "0", &all).await.expect("ack");
        assert!(got.is_empty(), "{:?}", ids(&got));
        // BLOCK running out on an empty stream is nil: no entries.
        let got = read(&mut session, Some(20), ">", &[]).await.expect("block");
        assert!(got.is_empty());

        // Writing to a key of another type: an error reply per entry, and
        // the connection still in step.
        let _: () = redis::cmd("SET")
            .arg(&["text", "x"])
            .query(&mut admin)
            .unwrap();
        let refused = session
            .xadd_all("text", Some(10), &entries)
            .await
            .expect("replies");
        assert!(
            refused
                .iter()
                .all(|r| matches!(r, Err(e) if has_code(e, "WRONGTYPE")))
        );

        // A killed connection fails the exchange under way as an outage; the
        // next one connects again.
        let _: usize = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
            .query(&mut admin)
            .unwrap();
        let e = read(&mut session, Some(20), ">", &[]).await.unwrap_err();
        assert!(is_outage(&e), "{e}");
        let written = session
            .xadd_all("in", Some(10), &entries)
            .await
            .expect("again");
        assert!(written.iter().all(Result::is_ok), "{written:?}");
        redis.stop().await;
    }
}
