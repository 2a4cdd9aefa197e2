//! Child processes for the tests that run the binary under test (`holistream
//! serve`, `worker`, `loadgen`) and the programs around it (nginx) as real
//! processes on loopback: spawned with their output in a log file, killed on
//! drop, their log printed when a test fails; and the waits for them to be
//! ready, each a poll ([`super::poll`]) with a deadline.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::poll::{EVERY, poll_within, wait_for};
use super::port::FreePort;
use super::redis_server::consumers;

/// Model loading in a dev-profile worker, with other processes busy.
pub const WORKER_START: Duration = Duration::from_secs(180);
/// How much of a log a failed test prints, from its end.
const LOG_TAIL_CHARS: usize = 4000;

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

/// A child process, SIGKILLed on drop if not killed yet (its whole process
/// group when spawned as a group's leader: nginx's workers outlive a killed
/// master). Its output goes to a log file, printed when a test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Spawned as the leader of its own process group: killed as a group.
    group: bool,
    killed: bool,
}

impl Proc {
    /// Starts `cmd` with its stdout and stderr in `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, group: bool, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("cloning the log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        if group {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
            group,
            killed: false,
        }
    }

    /// Starts `holistream <args>` (the binary under test) with only the
    /// `HOLISTREAM_*` / `REDIS_URL` variables given in `env` (none inherited
    /// from the test's environment).
    pub fn holistream(name: &str, args: &[&str], env: &[(&str, String)], dir: &Path) -> Proc {
        let mut cmd = hermetic_command();
        cmd.args(args).env("RUST_LOG", "info,holistream=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(name, cmd, false, dir)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_text());
        }
    }

    /// SIGKILL: the process (group) gets no chance to answer, acknowledge or
    /// close anything.
    pub fn kill(&mut self) {
        if self.killed {
            return;
        }
        if self.group {
            // SAFETY: kill(2) on the process group our own child leads (not
            // yet reaped, so the group id is still ours).
            unsafe { libc_kill(-self.pid(), SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid, not yet reaped (the
        // caller checked it has not exited).
        unsafe { libc_kill(self.pid(), SIGTERM) };
    }

    /// Waits at most `bound` for the process to exit; its status, or `None`
    /// if it still runs.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        poll_within(bound, EVERY, || std::future::ready(self.exited())).await
    }

    /// SIGTERM, then waits for the exit; panics if it takes over `bound`.
    pub async fn terminate(&mut self, bound: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(bound)
            .await
            .unwrap_or_else(|| panic!("{} did not stop within {bound:?} of SIGTERM", self.name))
    }

    /// Prints the end of its log (on failure).
    pub fn print_log(&self) {
        let text = self.log_text();
        let tail: String = text
            .chars()
            .rev()
            .take(LOG_TAIL_CHARS)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        eprintln!(
            "---- log of {} (last {LOG_TAIL_CHARS} chars) ----\n{tail}",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.print_log();
        }
    }
}

/// The shipped web demo, for `HOLISTREAM_WEB_DIR`.
fn web_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/web").into()
}

/// `holistream` with no configuration inherited from the test's environment.
pub fn hermetic_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holistream"));
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("HOLISTREAM_") || k == "REDIS_URL")
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts `holistream serve <args> --host 127.0.0.1 --port <port>` serving
/// the shipped web demo, with `env` (the entry code among it). See
/// [`wait_healthy`].
pub fn spawn_serve(
    name: &str,
    port: u16,
    args: &[&str],
    env: &[(&str, String)],
    dir: &Path,
) -> Proc {
    let port = port.to_string();
    let mut all_args = vec!["serve"];
    all_args.extend_from_slice(args);
    all_args.extend_from_slice(&["--host", "127.0.0.1", "--port", &port]);
    // WebRTC on a free UDP port: tests run servers side by side.
    let mut all_env = vec![
        ("HOLISTREAM_WEB_DIR", web_dir()),
        ("HOLISTREAM_RTC_PORT", "0".to_string()),
    ];
    all_env.extend(env.iter().cloned());
    Proc::holistream(name, &all_args, &all_env, dir)
}

/// Waits until `proc`, a `holistream serve` on `127.0.0.1:<port>`, answers
/// `/healthz`; panics with its log if it exits first.
pub async fn wait_healthy(proc: &mut Proc, port: u16, timeout: Duration) {
    let check = holistream::commands::healthcheck::HealthcheckArgs {
        port,
        host: "127.0.0.1".into(),
        timeout_ms: 500,
    };
    let what = format!("{} healthy", proc.name);
    wait_for(timeout, &what, || {
        proc.assert_running();
        holistream::commands::healthcheck::check(&check).is_ok()
    })
    .await;
}

/// `holistream worker --name <name> --workers 1` on the Redis at
/// `redis_url`, its forward passes on one core (`RAYON_NUM_THREADS=1`: the
/// machine may have two, shared with the other processes of the test). See
/// [`worker_ready`].
pub fn spawn_worker(redis_url: &str, name: &str, dir: &Path) -> Proc {
    Proc::holistream(
        name,
        &[
            "worker",
            "--name",
            name,
            "--workers",
            "1",
            // Short (held jobs are renewed every quarter), so a takeover
            // after a kill or a restart is quick; slow
            // forward passes of a loaded machine reach it, and then only the
            // lease keeps a live worker's job from being taken over.
            "--claim-idle-ms",
            "500",
            "--block-ms",
            "200",
        ],
        &[
            ("REDIS_URL", redis_url.into()),
            ("RAYON_NUM_THREADS", "1".into()),
        ],
        dir,
    )
}

/// Waits until the worker's thread reads the jobs stream (its consumer
/// `<name>-0` is in the group), i.e. its model is loaded; panics with its
/// log if it exits first.
pub async fn worker_ready(p: &mut Proc, redis_url: &str) {
    let consumer = format!("{}-0", p.name);
    let what = format!("worker {} reading the jobs stream", p.name);
    wait_for(WORKER_START, &what, || {
        p.assert_running();
        consumers(redis_url).contains(&consumer)
    })
    .await;
}

/// A `holistream serve` process on a loopback port, healthy.
pub struct Served {
    pub proc: Proc,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Served {
    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// [`spawn_serve`] on `port` (a free one when `None`), then
/// [`wait_healthy`] within `timeout`.
pub async fn start_serve(
    name: &str,
    port: Option<u16>,
    args: &[&str],
    env: &[(&str, String)],
    dir: &Path,
    timeout: Duration,
) -> Served {
    let port = port.unwrap_or_else(|| FreePort::new().release());
    let mut proc = spawn_serve(name, port, args, env, dir);
    wait_healthy(&mut proc, port, timeout).await;
    Served {
        proc,
        port,
        base: format!("http://127.0.0.1:{port}"),
    }
}
