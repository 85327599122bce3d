//! A private Redis Cluster per test: three masters and three replicas.
//!
//! Six `redis-server --cluster-enabled yes` processes on free loopback ports (client and bus
//! port both picked, so no `port + 10000` can collide), each with its own directory and nodes
//! file, joined by `redis-cli --cluster create ... --cluster-replicas 1`. Ready once every node
//! reports `cluster_state:ok` and knows all six; everything is killed on drop.
//!
//! Uses the `redis-server` named by `SLUICE_TEST_REDIS_SERVER` like [`RedisServer`]
//! (super::RedisServer), and the `redis-cli` beside it or on PATH.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::redis_server::{free_port, signal};

/// How long the whole cluster gets to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a replica is missed before its master's replicas take over: short so a killed
/// master fails over quickly, long enough that a busy CI machine does not fail nodes over.
const NODE_TIMEOUT_MS: u64 = 3000;

/// One node of the cluster.
struct Node {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

/// Six nodes, three masters with one replica each.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    /// Starts and joins the cluster; panics with the nodes' logs if it does not form.
    pub fn new() -> Self {
        let mut cluster = RedisCluster {
            nodes: (0..6).map(|_| Node::start()).collect(),
        };
        cluster.create();
        cluster
    }

    /// `redis+cluster://127.0.0.1:<p1>,...`, every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The ports of the nodes that have not been killed.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// A synchronous cluster connection (follows MOVED like the runtime does).
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect();
        redis::cluster::ClusterClient::builder(seeds)
            .retries(10)
            .build()
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to the cluster: {e}"))
    }

    /// A plain connection to the master owning `key`, for pipelined loading (the cluster
    /// connection of redis-rs does not pipeline).
    pub fn conn_for(&self, key: &str) -> redis::Connection {
        self.node_conn(self.master_of(key))
    }

    /// A plain connection to the node on `port`, None if it does not answer.
    pub fn try_node_conn(&self, port: u16) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .ok()
    }

    /// A plain connection to the node on `port`.
    pub fn node_conn(&self, port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("connect to node {port}: {e}"))
    }

    /// The port of the master that owns `key`'s slot right now.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node_conn(self.live_port()))
            .expect("CLUSTER KEYSLOT");
        let live = self.nodes.iter().filter(|n| n.child.is_some());
        live.map(|n| n.port)
            .find(|&port| self.owns(port, slot))
            .unwrap_or_else(|| panic!("no live master owns slot {slot} of {key}"))
    }

    /// The port of the one live node that serves `key`'s slot as a master, None while
    /// several claim it (a failover that not every node has heard of yet) or none does.
    pub fn sole_master_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node_conn(self.live_port()))
            .expect("CLUSTER KEYSLOT");
        let owners: Vec<u16> = self
            .ports()
            .into_iter()
            .filter(|&port| self.owns(port, slot))
            .collect();
        match owners[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The port of some node that has not been killed.
    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// Whether the node on `port` serves `slot` as a master, by its own view (a replica's
    /// own line lists no slots).
    fn owns(&self, port: u16, slot: u16) -> bool {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node_conn(port))
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("myself"))
            })
            .is_some_and(|line| {
                line.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    match (lo.parse::<u16>(), hi.parse::<u16>()) {
                        (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                        _ => false,
                    }
                })
            })
    }

    /// A replica of the master on `port`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node_conn(master))
            .expect("CLUSTER MYID");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node_conn(master))
            .expect("CLUSTER NODES");
        nodes
            .lines()
            .find_map(|line| {
                let parts: Vec<&str> = line.split_whitespace().collect();
                (parts.get(3) == Some(&id.as_str()) && parts[2].contains("slave"))
                    .then(|| {
                        parts[1]
                            .split(['@', ','])
                            .next()?
                            .rsplit_once(':')?
                            .1
                            .parse()
                            .ok()
                    })
                    .flatten()
            })
            .unwrap_or_else(|| panic!("master {master} has no replica"))
    }

    /// Promotes the replica on `replica` with `CLUSTER FAILOVER` (coordinated: no write is
    /// lost) and waits until it serves as master.
    pub fn failover(&self, replica: u16) {
        let mut con = self.node_conn(replica);
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut con)
            .expect("CLUSTER FAILOVER");
        super::wait_until(FORM_TIMEOUT, format!("node {replica} promoted"), || {
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).expect("ROLE");
            matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
        });
    }

    fn create(&mut self) {
        let mut cli = Command::new(redis_cli());
        cli.arg("--cluster").arg("create");
        for n in &self.nodes {
            cli.arg(format!("127.0.0.1:{}", n.port));
        }
        cli.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cli
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli (from redis-tools): {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let deadline = Instant::now() + FORM_TIMEOUT;
        for n in &self.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut self.node_conn(n.port))
                    .expect("CLUSTER INFO");
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == "cluster_known_nodes:6");
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} not ok within {FORM_TIMEOUT:?}:\n{info}\n{}",
                    n.port,
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Replicas in sync, so a failover has one to promote.
        super::wait_until(
            FORM_TIMEOUT,
            "three replicas linked to their masters",
            || {
                let linked = self.nodes.iter().filter(|n| {
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut self.node_conn(n.port))
                        .expect("INFO replication");
                    info.lines().any(|l| l.trim() == "master_link_status:up")
                });
                linked.count() == 3
            },
        );
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let path = n.dir.path().join("redis.log");
                format!(
                    "--- {} ---\n{}",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill9(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Node {
    /// Starts one cluster-enabled server on free ports, retrying if a port is taken.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for a cluster node");
        for _ in 0..10 {
            let (port, bus) = (free_port(), free_port());
            if port == bus {
                continue;
            }
            let mut child = Command::new(redis_server())
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            let started = loop {
                if child.try_wait().ok().flatten().is_some() {
                    break false; // a port was taken: try others
                }
                let pong = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                    .and_then(|mut con| redis::cmd("INFO").arg("server").query::<String>(&mut con));
                if let Ok(info) = pong {
                    break info.contains(&format!("process_id:{}", child.id()));
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if started {
                return Node {
                    child: Some(child),
                    port,
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("no cluster node started after 10 attempts");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server() -> PathBuf {
    std::env::var_os("SLUICE_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "redis-server".into())
}

/// `redis-cli` beside the chosen `redis-server`, else the one on PATH.
fn redis_cli() -> PathBuf {
    let server = redis_server();
    let beside = server.with_file_name("redis-cli");
    if server.components().count() > 1 && beside.is_file() {
        beside
    } else {
        "redis-cli".into()
    }
}
