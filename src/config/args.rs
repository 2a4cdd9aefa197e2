//! The command-line flags of the two long-running commands, `serve` and
//! `worker`, and how they assemble their configuration: defaults, then the
//! file, then the environment, then the flags, then validation. The tools'
//! flags (`infer`, `parity`, `bench`, `loadgen`, `healthcheck`) live with
//! their commands: they configure one run, not a service.
//!
//! Must not start anything: it returns typed, validated configuration.

use std::path::PathBuf;

use super::{Config, ConfigError, PoolKind, REDIS_URL_ENV, WorkerConfig};

/// Flags of `holistream serve`. Each flag also reads the environment variable
/// named beside it; a flag given on the command line wins.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (sections: server, auth, redis, pool, session,
    /// admin, model).
    #[arg(long, env = "HOLISTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "HOLISTREAM_HOST")]
    pub host: Option<String>,
    /// Port to listen on (0: any free port).
    #[arg(long, env = "HOLISTREAM_PORT")]
    pub port: Option<u16>,
    /// Redis URL of the session mirror; without it sessions stay in memory.
    #[arg(long, env = REDIS_URL_ENV, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Inference workers (default: number of cores).
    #[arg(long, env = "HOLISTREAM_WORKERS")]
    pub workers: Option<usize>,
    /// Fault injection, e.g. `panic=0.05,stall=0.01:2s,slow=0.1:50ms`.
    #[arg(long, env = "HOLISTREAM_FAULTS")]
    pub faults: Option<String>,
    /// Folder of the web demo.
    #[arg(long, env = "HOLISTREAM_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// Mark the session cookie `Secure` (behind HTTPS).
    #[arg(long)]
    pub secure_cookie: bool,
    /// Inference pool: `local` threads, or `redis` for `holistream worker`
    /// processes reached through the Redis at `REDIS_URL`.
    #[arg(long, env = "HOLISTREAM_POOL", value_enum)]
    pub pool: Option<PoolKind>,
    /// This gateway's id with `--pool redis` (default: a fresh uuid).
    #[arg(long, env = "HOLISTREAM_GATEWAY_ID")]
    pub gateway_id: Option<String>,
}

impl ServeArgs {
    /// Defaults, then the file, then the environment, then these flags;
    /// validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env();
        config.apply_env_settings()?;
        if let Some(h) = &self.host {
            config.server.host = h.clone();
        }
        if let Some(p) = self.port {
            config.server.port = p;
        }
        if let Some(u) = &self.redis_url {
            config.redis.url = Some(u.clone()).filter(|u| !u.is_empty());
        }
        if let Some(w) = self.workers {
            config.pool.workers = w;
        }
        if let Some(f) = &self.faults {
            config.pool.faults = f
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("--faults: {e}")))?;
        }
        if let Some(d) = &self.web_dir {
            config.server.web_dir = d.clone();
        }
        if self.secure_cookie {
            config.server.secure_cookie = true;
        }
        if let Some(kind) = self.pool {
            config.pool.kind = kind;
        }
        if let Some(id) = &self.gateway_id {
            config.pool.remote.gateway_id = Some(id.clone());
        }
        // The remote pool uses the same Redis as the session mirror.
        config.pool.remote.redis_url = config.redis.url.clone();
        config.validate()?;
        Ok(config)
    }
}

/// Flags of `holistream worker`; each also reads the environment variable
/// named beside it, and each overrides `[worker]` of the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// TOML configuration file (sections read: worker, model).
    #[arg(long, env = "HOLISTREAM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis holding the jobs stream (the gateways' `REDIS_URL`).
    #[arg(long, env = REDIS_URL_ENV, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Pipeline threads, each with its own model (default: number of cores).
    #[arg(long, env = "HOLISTREAM_WORKERS")]
    pub workers: Option<usize>,
    /// Name of this process in the consumer group (default: host name, pid
    /// and a random suffix). Must be unique among running workers.
    #[arg(long, env = "HOLISTREAM_WORKER_NAME")]
    pub name: Option<String>,
    /// A job pending this long on another consumer is taken over
    /// (`XAUTOCLAIM`); longer than the slowest forward pass. Default 2000.
    #[arg(long, env = "HOLISTREAM_CLAIM_IDLE_MS")]
    pub claim_idle_ms: Option<u64>,
    /// Longest wait of one `XREADGROUP`; bounds how late a stop is seen.
    /// Default 1000.
    #[arg(long)]
    pub block_ms: Option<u64>,
    /// Largest frame accepted, in either orientation (the gateways'
    /// `pool.max_frame_width`); bigger frames are answered `bad_frame`
    /// before any pixel is decoded. At most 4096; default 1920.
    #[arg(long, env = "HOLISTREAM_MAX_FRAME_WIDTH")]
    pub max_frame_width: Option<u32>,
    /// See `--max-frame-width`; default 1080.
    #[arg(long, env = "HOLISTREAM_MAX_FRAME_HEIGHT")]
    pub max_frame_height: Option<u32>,
}

impl WorkerArgs {
    /// `[worker]` and `[model]` from the defaults, the file, the
    /// environment and these flags; validated.
    pub fn load(&self) -> Result<(WorkerConfig, super::ModelConfig), ConfigError> {
        let config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let (mut worker, mut model) = (config.worker, config.model);
        model.apply_env()?;
        if let Some(u) = &self.redis_url {
            worker.redis_url = Some(u.clone()).filter(|u| !u.is_empty());
        }
        if let Some(n) = self.workers {
            worker.threads = n;
        }
        if let Some(n) = &self.name {
            worker.name = Some(n.clone());
        }
        if let Some(ms) = self.claim_idle_ms {
            worker.claim_idle_ms = ms;
        }
        if let Some(ms) = self.block_ms {
            worker.block_ms = ms;
        }
        if let Some(w) = self.max_frame_width {
            worker.max_frame_width = w;
        }
        if let Some(h) = self.max_frame_height {
            worker.max_frame_height = h;
        }
        worker.validate()?;
        Ok((worker, model))
    }
}
