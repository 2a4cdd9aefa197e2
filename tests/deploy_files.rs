//! The deploy files (`docker/Dockerfile`, `docker/compose.yaml`,
//! `docker/nginx.conf` with `docker/nginx/`, `docs/deploy.md`) checked against
//! the binary under test, as far as a machine without a Docker engine allows.
//! Cheap: no model is loaded, the binary only prints its `--help`.
//!
//! What this cannot check: that the image builds and runs (no engine), and
//! the release profile itself (CI builds the dev profile only; the Dockerfile's
//! command, lockfile, features and toolchain are checked to be CI's).
//! `docker/check.sh` (run by `.ci/run`) adds `docker-compose config` and
//! `nginx -t`; `tests/nginx.rs` runs the shipped nginx files with real traffic.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use support::fixtures::{repo_file, repo_root};

/// `(block, NAME)` for every `NAME: value` line of compose.yaml whose key is
/// an environment variable's name (`[A-Z0-9_]+`); the block is the service
/// (or top-level key, e.g. `x-gateway-env`) the line sits in.
fn compose_variables(compose: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut top, mut block) = (String::new(), String::new());
    for line in compose.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        let Some((key, _)) = t.split_once(':') else {
            continue;
        };
        if indent == 0 {
            top = key.to_string();
            block = top.clone();
        } else if indent == 2 && top == "services" {
            block = key.to_string();
        }
        if !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            out.push((block.clone(), key.to_string()));
        }
    }
    out
}

/// `holistream <sub> --help`, which must succeed (the subcommand exists).
fn help(sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_holistream"))
        .args([sub, "--help"])
        .env_clear()
        .output()
        .expect("running the binary");
    assert!(
        out.status.success(),
        "`holistream {sub} --help` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The words made of `[A-Z0-9_]` that start with `prefix` in `text`.
fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..len].trim_end_matches('_').to_string());
        }
        rest = &tail[len.max(1)..];
    }
    names
}

/// Every environment variable the binary reads: the `env` of each flag (from
/// `--help`), the secrets and settings `src/config/` reads by name
/// (`Config::apply_env`, `apply_env_settings`), the log filter, rayon's thread
/// count (the nets' CPU backend) and the model's switches.
fn variables_read() -> BTreeSet<String> {
    let mut read = BTreeSet::new();
    for sub in ["serve", "worker", "healthcheck", "loadgen"] {
        let text = help(sub);
        for part in text.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            read.insert(name);
        }
    }
    // Names in string literals of the configuration module: what it reads
    // from the environment besides the flags.
    let mut config_rs = String::new();
    let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    for entry in std::fs::read_dir(&config_dir).expect("src/config/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            config_rs.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    assert!(
        config_rs.contains("HOLISTREAM_"),
        "src/config/ was not read"
    );
    for quoted in config_rs.split('"').skip(1).step_by(2) {
        if quoted.starts_with("HOLISTREAM_")
            && quoted
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            read.insert(quoted.to_string());
        }
    }
    read.insert(holistream::config::PASSWORD_ENV.to_string());
    read.insert(holistream::config::REDIS_URL_ENV.to_string());
    read.insert("RUST_LOG".into());
    read.insert("RAYON_NUM_THREADS".into());
    read.insert(holistream::config::model::NETS_ENV.to_string());
    read.insert(holistream::config::model::PARALLEL_BRANCHES_ENV.to_string());
    // Read by `main` through the kernels (`Isa::selected`); that it is read
    // is checked by `the_binary_reads_holistream_isa` below.
    read.insert("HOLISTREAM_ISA".into());
    read
}

/// Variables only the test suite reads (README documents them for CI); the
/// binary ignores them, so the deploy files must not set them.
const TEST_ONLY: [&str; 1] = ["HOLISTREAM_EXPECT_ISA"];

#[test]
fn every_variable_the_deploy_files_set_is_read_and_documented() {
    let read = variables_read();
    for expected in [
        "HOLISTREAM_POOL",
        "HOLISTREAM_GATEWAY_ID",
        "HOLISTREAM_WORKERS",
        "REDIS_URL",
    ] {
        assert!(read.contains(expected), "{expected} not read: {read:?}");
    }
    let compose = repo_file("docker/compose.yaml");
    let dockerfile = repo_file("docker/Dockerfile");
    let docs = repo_file("docs/deploy.md");
    let readme = repo_file("README.md");

    // Set in a holistream container: `NAME: value` under `environment:` in
    // compose (outside the redis and nginx services, whose variables are
    // their own: checked in `nginx_…` below), or `ENV NAME=value` (and
    // continuation lines) in the Dockerfile.
    let mut set = BTreeSet::new();
    for (service, key) in compose_variables(&compose) {
        if service != "redis" && service != "nginx" {
            set.insert(key);
        }
    }
    let mut in_env = false;
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with("ENV ") {
            in_env = true;
        }
        if in_env {
            for word in t.trim_start_matches("ENV ").split_whitespace() {
                if let Some((k, _)) = word.split_once('=') {
                    set.insert(k.to_string());
                }
            }
            in_env = t.ends_with('\\');
        }
    }
    assert!(set.contains("HOLISTREAM_POOL"), "parsed nothing? {set:?}");
    let unread: Vec<&String> = set.difference(&read).collect();
    assert!(
        unread.is_empty(),
        "the deploy files set variables the binary never reads: {unread:?}"
    );

    // Every variable the binary reads is in the docs' table, and every
    // HOLISTREAM_* variable the docs or README name is one it reads, or one of
    // compose's own (interpolated into compose.yaml, `${NAME...}`).
    let interpolated: BTreeSet<String> = compose
        .match_indices("${")
        .map(|(i, _)| {
            compose[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    for name in &read {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/deploy.md does not document {name}"
        );
    }
    for name in &interpolated {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/deploy.md does not document compose's {name}"
        );
    }
    for text in [&docs, &readme, &compose] {
        for name in names_with_prefix(text, "HOLISTREAM_") {
            assert!(
                read.contains(&name)
                    || interpolated.contains(&name)
                    || (text == &readme && TEST_ONLY.contains(&name.as_str())),
                "{name} is named in the deploy docs but read by nothing"
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_what_ci_builds_and_runs_real_subcommands() {
    let dockerfile = repo_file("docker/Dockerfile");
    let ci = repo_file(".ci/run");

    // The build: one cargo command, with CI's lockfile and features.
    let build: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.contains("cargo build"))
        .collect();
    assert_eq!(
        build.len(),
        1,
        "one cargo build in the Dockerfile: {build:?}"
    );
    let build = build[0].trim();
    assert!(
        build.starts_with("cargo build --release --locked --bin holistream"),
        "the image's build command changed: {build}"
    );
    let test = ci
        .lines()
        .find(|l| l.trim_start().starts_with("cargo test"))
        .expect(".ci/run runs cargo test");
    assert!(test.contains("--locked"), "CI builds from the lockfile");
    for flag in [
        "--features",
        "--all-features",
        "--no-default-features",
        "-F ",
    ] {
        assert!(
            !build.contains(flag) && !test.contains(flag),
            "{flag}: the image and CI must build the same features"
        );
    }
    assert!(
        dockerfile.contains("install -D -m 0755 target/release/holistream /out/holistream")
            && dockerfile.contains("COPY --from=build /out/holistream /usr/local/bin/holistream"),
        "the runtime stage must get the binary the build stage built"
    );

    // The image's Rust is the toolchain CI builds with (same major.minor).
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_IMAGE=rust:"))
        .expect("ARG RUST_IMAGE=rust:<version>-…");
    let image_version = image.split('-').next().unwrap();
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .expect("rustc --version");
    let rustc = String::from_utf8_lossy(&rustc.stdout).to_string();
    let local: Vec<&str> = rustc
        .split_whitespace()
        .nth(1)
        .expect("rustc <version>")
        .split('.')
        .collect();
    assert_eq!(
        image_version,
        format!("{}.{}", local[0], local[1]),
        "docker/Dockerfile builds with Rust {image_version}, CI with {rustc}"
    );

    // Every COPY from the context names a path that exists and that
    // .dockerignore does not drop; the nets' ONNX files and the web demo are
    // in the context (the build script and the runtime stage need them).
    let ignore = repo_file(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["models/", "web/", "src/", "Cargo.lock"] {
        assert!(
            !ignored
                .iter()
                .any(|i| needed.starts_with(i.trim_start_matches('/'))),
            ".dockerignore drops {needed}"
        );
    }
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[1].starts_with("--from") {
            continue;
        }
        for src in &words[1..words.len() - 1] {
            let p = repo_root().join(src);
            assert!(p.exists(), "the Dockerfile copies {src}, which is missing");
        }
    }

    // Non-root, a health check, and every command the image or compose runs
    // is a subcommand of this binary.
    assert!(dockerfile.lines().any(|l| l.starts_with("USER holistream")));
    let healthcheck = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("CMD [\"holistream\""))
        .expect("HEALTHCHECK CMD [\"holistream\", …]");
    assert!(healthcheck.contains("\"healthcheck\""), "{healthcheck}");
    help("healthcheck");
    let compose = repo_file("docker/compose.yaml");
    let mut commands = BTreeSet::new();
    for line in dockerfile.lines().chain(compose.lines()) {
        let t = line.trim();
        for prefix in ["CMD [\"", "command: [\""] {
            if let Some(rest) = t.strip_prefix(prefix) {
                commands.insert(rest.split('"').next().unwrap().to_string());
            }
        }
    }
    commands.remove("holistream");
    commands.remove("redis-server");
    assert_eq!(
        commands,
        BTreeSet::from(["serve".to_string(), "worker".to_string()]),
        "the roles the image runs"
    );
    for sub in &commands {
        help(sub);
    }
}

/// The shipped nginx configuration: the main file, then each file of
/// `docker/nginx/` (the sites and their shared locations).
fn nginx_files() -> Vec<(String, String)> {
    let mut files = vec![(
        "docker/nginx.conf".to_string(),
        repo_file("docker/nginx.conf"),
    )];
    let dir = repo_root().join("docker/nginx");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("docker/nginx/")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    names.sort();
    for name in names {
        let path = format!("docker/nginx/{name}");
        let text = repo_file(&path);
        files.push((path, text));
    }
    files
}

#[test]
fn nginx_balances_over_the_gateways_compose_starts() {
    let files = nginx_files();
    let nginx = repo_file("docker/nginx.conf");
    let compose = repo_file("docker/compose.yaml");
    let upstreams: BTreeSet<String> = nginx
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|a| a.trim_end_matches(';'))
        .filter(|a| a.contains(':'))
        .map(str::to_string)
        .collect();
    assert!(upstreams.len() >= 2, "two or more gateways: {upstreams:?}");
    for addr in &upstreams {
        let (host, port) = addr.split_once(':').unwrap();
        assert!(
            compose.contains(&format!("\n  {host}:\n")),
            "nginx sends to {host}, which compose does not start"
        );
        assert_eq!(port, "8080", "gateways listen on HOLISTREAM_PORT 8080");
    }
    for (path, text) in &files {
        assert!(
            text.matches('{').count() == text.matches('}').count(),
            "unbalanced braces in {path}"
        );
    }

    // Both sites include the one set of locations, which proxies with the
    // WebSocket upgrade, a streaming-length read timeout, the Host with its
    // port (the gateways' Origin check), and a client address the client
    // cannot choose.
    let locations = repo_file("docker/nginx/locations.conf");
    for site in ["docker/nginx/http.conf", "docker/nginx/https.conf"] {
        assert!(
            repo_file(site).contains("include holistream/locations.conf;"),
            "{site} does not include the shared locations"
        );
    }
    for line in [
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_read_timeout 3600s;",
    ] {
        assert!(locations.contains(line), "locations.conf lacks `{line}`");
    }
    for (path, text) in &files {
        // The directives, without the comments that explain them.
        let text: String = text
            .lines()
            .map(|l| l.split('#').next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            !text.contains("proxy_set_header Host $host;"),
            "{path} forwards Host without its port"
        );
        assert!(
            !text.contains("$proxy_add_x_forwarded_for"),
            "{path} passes on the client's own X-Forwarded-For"
        );
    }
    // Operator routes are refused at the door.
    for deny in [
        "location ^~ /admin/  { return 404; }",
        "location = /metrics  { return 404; }",
        "location ^~ /metrics/ { return 404; }",
    ] {
        assert!(locations.contains(deny), "locations.conf lacks `{deny}`");
    }

    // TLS: modern protocols only, HSTS, and plain HTTP redirected.
    let https = repo_file("docker/nginx/https.conf");
    assert!(https.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
    assert!(https.contains("add_header Strict-Transport-Security"));
    assert!(https.contains("return 301 https://$host:$holistream_https_port$request_uri;"));
    assert!(https.contains("ssl_certificate     certs/fullchain.pem;"));
}

#[test]
fn compose_mounts_what_the_nginx_site_script_reads() {
    let compose = repo_file("docker/compose.yaml");
    let script = repo_file("docker/nginx-site.sh");
    // The script picks the site the main file includes.
    assert!(repo_file("docker/nginx.conf").contains("include holistream-site.conf;"));
    for site in ["holistream/http.conf", "holistream/https.conf"] {
        assert!(script.contains(&format!("include {site};")), "{site}");
    }
    // Where compose puts each file is where nginx.conf and the script look.
    for mount in [
        "./nginx.conf:/etc/nginx/nginx.conf:ro",
        "./nginx:/etc/nginx/holistream:ro",
        "./nginx-site.sh:/docker-entrypoint.d/40-holistream-site.sh:ro",
        ":/etc/nginx/certs:ro",
    ] {
        assert!(compose.contains(mount), "compose does not mount {mount}");
    }
    // The image's entrypoint runs only executable scripts.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = repo_root().join("docker/nginx-site.sh");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "docker/nginx-site.sh is not executable");
    }
    // nginx's and Redis's own variables are read by what they are set for.
    for (service, key) in compose_variables(&compose) {
        match service.as_str() {
            "nginx" => assert!(
                script.contains(&format!("${{{key}")),
                "compose sets {key} for nginx, which nginx-site.sh never reads"
            ),
            "redis" => assert_eq!(key, "REDISCLI_AUTH", "redis's environment"),
            _ => {}
        }
    }
    // Redis has a password, and the gateways and workers have it too; the
    // gateways trust forwarding headers from the compose network only.
    assert!(compose.contains("\"--requirepass\", \"${REDIS_PASSWORD:?"));
    assert_eq!(
        compose
            .matches("REDIS_URL: redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0")
            .count(),
        2,
        "the gateways' and the workers' REDIS_URL carry the password"
    );
    assert!(compose.contains("HOLISTREAM_TRUSTED_PROXIES: ${HOLISTREAM_SUBNET:-"));
    assert!(compose.contains("- subnet: ${HOLISTREAM_SUBNET:-"));
}

/// A value of `HOLISTREAM_ISA` the CPU cannot honour stops the binary before
/// it does anything, with exit code 2 and a line naming the variable.
#[test]
fn the_binary_reads_holistream_isa() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_holistream"))
        .args(["infer", "/nonexistent.jpg"])
        .env("HOLISTREAM_ISA", "avx9000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HOLISTREAM_ISA"), "{stderr}");
}
