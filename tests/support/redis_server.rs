//! The one Redis spawner ([`RedisServer`]) and the queries the tests and the
//! bench make of the remote pool's stream and group in it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use holistream::actors::remote::{JOBS_STREAM, WORKERS_GROUP};

use super::poll::wait_blocking;
use super::port::FreePort;

/// A `redis-server` child process on a free loopback port, without
/// persistence; killed on drop. `REDIS_SERVER` overrides the binary.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn spawn() -> RedisServer {
        RedisServer::start_new(None)
    }

    /// One with a password and protected mode, as compose runs it.
    pub fn spawn_with_password(password: &str) -> RedisServer {
        RedisServer::start_new(Some(password.into()))
    }

    fn start_new(password: Option<String>) -> RedisServer {
        let mut r = RedisServer {
            port: FreePort::new().release(),
            password,
            child: None,
        };
        r.start();
        r
    }

    /// `redis://127.0.0.1:<port>/`, or with a password compose's shape,
    /// `redis://:<password>@127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        match &self.password {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection (bounded wait); panics if there is none.
    pub fn con(&self) -> redis::Connection {
        connect(&self.url())
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence) and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    fn start(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/bin/redis-server").exists() {
                "/usr/bin/redis-server".into()
            } else {
                "redis-server".into()
            }
        });
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw, "--protected-mode", "yes"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (install redis-server)"));
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("the Redis URL");
        wait_blocking(
            Duration::from_secs(10),
            "redis-server answering PING",
            || {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("redis-server exited at start: {status}");
                }
                client
                    .get_connection_with_timeout(Duration::from_millis(200))
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection to the Redis at `url` (2 s bound); panics if there is none.
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connecting to the test redis")
}

/// The consumers of the workers' group on the jobs stream (none while the
/// stream or the group does not exist yet); any other error fails the test.
pub fn consumer_infos(url: &str) -> Vec<redis::streams::StreamInfoConsumer> {
    let info: redis::RedisResult<redis::streams::StreamInfoConsumersReply> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .query(&mut connect(url));
    match info {
        Ok(i) => i.consumers,
        Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
            Vec::new()
        }
        Err(e) => panic!("XINFO CONSUMERS failed: {e}"),
    }
}

/// Names of the consumers of the workers' group.
pub fn consumers(url: &str) -> Vec<String> {
    consumer_infos(url).into_iter().map(|c| c.name).collect()
}

/// Jobs delivered to `consumer` and not yet acknowledged (0 if it is not in
/// the group).
pub fn pending_of(url: &str, consumer: &str) -> usize {
    consumer_infos(url)
        .into_iter()
        .find(|c| c.name == consumer)
        .map_or(0, |c| c.pending)
}

/// Jobs pending in the workers' group (delivered, not acknowledged).
pub fn pending(url: &str) -> u64 {
    let summary: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .query(&mut connect(url))
        .expect("XPENDING");
    summary.count() as u64
}

/// Whether the workers' consumer group exists on the jobs stream.
pub fn group_exists(url: &str) -> bool {
    let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(JOBS_STREAM)
        .query(&mut connect(url));
    info.is_ok_and(|i| i.groups.iter().any(|g| g.name == WORKERS_GROUP))
}
