//! What the tests read from the checkout and the environment: the fixture
//! photos (as they are, or re-encoded as a camera's 640x480 frame), the
//! shared test data beside the checkout, repository files, durations from
//! the environment.

use std::io::Cursor;
use std::path::PathBuf;

use bytes::Bytes;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/`: public-domain photos, a clip, their goldens.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The folder of the shared test data (`../shared/testdata` from the repo
/// root).
pub fn shared_testdata() -> PathBuf {
    repo_root().join("../shared/testdata")
}

/// A repository file's text; panics, naming it, if it cannot be read.
pub fn repo_file(path: &str) -> String {
    let p = repo_root().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// A real JPEG photo for frames (public domain, in `tests/fixtures/` when
/// present, else from the shared test data).
pub fn test_jpeg() -> Vec<u8> {
    let candidates = [
        fixtures().join("grace_hopper.jpg"),
        shared_testdata().join("images/grace_hopper.jpg"),
    ];
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            return bytes;
        }
    }
    panic!("no test JPEG found at {candidates:?}");
}

/// A fixture photo (public domain, `tests/fixtures/`) re-encoded as a
/// 640x480 JPEG, the size the web demo sends.
pub fn jpeg_640x480(name: &str) -> Bytes {
    let path = fixtures().join(name);
    let image = image::open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
        .to_rgb8();
    let resized = image::imageops::resize(&image, 640, 480, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&resized)
        .expect("encoding a JPEG");
    Bytes::from(out.into_inner())
}

/// The env variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds from the env variable `name`, else `default`.
pub fn env_secs(name: &str, default: u64) -> u64 {
    env_or(name, default)
}
