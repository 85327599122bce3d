//! A TCP proxy in front of a `redis-server`, to break a link without telling either end.
//!
//! A half-open connection (a NAT or firewall that forgot the flow, a peer that vanished) is
//! the failure a process cannot see by waiting: no FIN, no RST, just silence, and the server
//! still counts the client as connected. [`Proxy::blackhole`] produces exactly that: every
//! connection open at that moment stops carrying bytes in both directions but stays open;
//! connections made afterwards work normally, as a reconnect through a healthy path would.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often idle proxy threads look at their flags.
const TICK: Duration = Duration::from_millis(20);

/// A proxy on `127.0.0.1:<port>` forwarding to a local Redis; stopped on drop.
pub struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// One flag per connection accepted so far: set, it carries nothing more.
    links: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding a free local port to `127.0.0.1:<target_port>`.
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy port");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("the proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let accept = {
            let (stop, links) = (stop.clone(), links.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                                continue;
                            };
                            let dead = Arc::new(AtomicBool::new(false));
                            links.lock().expect("links").push(dead.clone());
                            pump(&client, &server, &dead, &stop);
                            pump(&server, &client, &dead, &stop);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
                        Err(e) => panic!("proxy accept: {e}"),
                    }
                }
            })
        };
        Proxy {
            port,
            stop,
            links,
            accept: Some(accept),
        }
    }

    /// `redis://127.0.0.1:<port>`: the Redis behind the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every connection open now goes silent, both ways, and stays open.
    pub fn blackhole(&self) {
        for link in self.links.lock().expect("links").iter() {
            link.store(true, Ordering::Relaxed);
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes, the link is blackholed
/// (then it holds both sockets open and copies nothing), or the proxy stops.
fn pump(from: &TcpStream, to: &TcpStream, dead: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    let (mut from, mut to) = (
        from.try_clone().expect("clone a socket"),
        to.try_clone().expect("clone a socket"),
    );
    let (dead, stop) = (dead.clone(), stop.clone());
    from.set_read_timeout(Some(TICK))
        .expect("a socket read timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while !stop.load(Ordering::Relaxed) {
            if dead.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                // Blackholed mid-read: these bytes are lost, as on a dead link.
                Ok(_) if dead.load(Ordering::Relaxed) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}
