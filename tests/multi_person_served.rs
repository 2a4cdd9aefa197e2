//! Multi-person Holistic served over `/ws` (issue 13, "Served"): the real
//! server, real models, the real frames of a clip with several people
//! (`/work/shared/testdata/multi/video/faceapi2_pan.mjpeg`, 640x480 baseline
//! JPEGs back to back), a real WebSocket client.
//!
//! - `people_through_the_local_pool`: `hello` shows `people` and
//!   `max_people`; `people` above the maximum is `bad_control`; with
//!   `{"type":"config","people":3}` the results carry a `people` list with
//!   stable distinct ids; back at `people` = 1 the `people` key is gone; a
//!   client that never sends `people` never sees the key; `loadgen --people`
//!   counts the people per result.
//! - `people_through_the_redis_pool`: the same clip through a gateway with
//!   `pool.kind = redis`, a real `redis-server` and a `holistream worker`
//!   process: `people` travels in the job's options and the list comes back.
//!
//! The clip is streamed once per pool kind, a frame at a time (each sent
//! when the previous one is answered, so none is dropped and the tracking
//! sees every frame), in tracking mode as a camera would.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use holistream::commands::loadgen::{self, LoadgenArgs};
use holistream::config::{Config, PoolKind};
use parking_lot::Mutex;
use serde_json::{Value, json};

use support::fixtures::shared_testdata;
use support::http::login;
use support::process::{spawn_worker, worker_ready};
use support::redis_server::RedisServer;
use support::server::{TestServer, test_config};
use support::ws::{WsConn, frame, next_answer, open_session, send, ws_connect};

const PASSWORD: &str = "multi-person-test-code";
/// One frame of three people, all stages for each, on a loaded machine.
const ANSWER: Duration = Duration::from_secs(60);
const PEOPLE: usize = 3;

/// The tests of this file run one at a time: each streams the clip at three
/// people's cost, and the machine may have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// The share of results that must carry all [`PEOPLE`] people. Measured:
/// the clip shows three people on every frame; the pipeline finds all three
/// on 116 to 120 of the 120 results (ids 0, 1, 2 throughout) on a loaded
/// two-core machine. Half leaves room for a slower machine's filters.
const MIN_FULL_SHARE: f64 = 0.5;
/// Most distinct ids over the clip: three people who stay in the picture
/// keep their ids (measured: exactly 0, 1, 2); a lost and re-found person
/// gets a new one, which a few may.
const MAX_IDS_SEEN: usize = 2 * PEOPLE;

/// The pan clip's frames (120 of them, 640x480).
fn clip_frames() -> Vec<Bytes> {
    let path = shared_testdata().join("multi/video/faceapi2_pan.mjpeg");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let frames: Vec<Bytes> = holistream::commands::parity::split_mjpeg(&bytes)
        .into_iter()
        .map(Bytes::copy_from_slice)
        .collect();
    assert_eq!(frames.len(), 120, "{}", path.display());
    frames
}

fn config() -> Config {
    let mut c = test_config(PASSWORD);
    // Frames go one at a time; neither the fps cap nor the TTLs are tested
    // here, and a three-person frame takes several single-person ones.
    c.session.max_fps = 60;
    c.session.default_fps = 60;
    c.pool.job_ttl_ms = 30_000;
    c.pool.stall_deadline_ms = 30_000;
    c.pool.remote.job_ttl_ms = 30_000;
    c.pool.remote.reply_timeout_ms = 30_000;
    c
}

/// Sends a control message.
async fn control(conn: &mut WsConn, msg: Value) {
    send(conn, awc::ws::Message::Text(msg.to_string().into())).await;
}

/// Sends `jpeg` as frame `seq` and returns its answer, which must be a
/// result.
async fn result_of(conn: &mut WsConn, seq: u32, jpeg: &[u8]) -> Value {
    send(conn, frame(seq, f64::from(seq), jpeg)).await;
    let r = next_answer(conn, ANSWER).await;
    assert_eq!(r["type"], "result", "frame {seq}: {r}");
    assert_eq!(r["seq"], seq, "{r}");
    r
}

/// The ids of a result's `people`, in order; panics if the key is missing or
/// a person is malformed.
fn people_ids(r: &Value) -> Vec<u64> {
    let people = r["people"]
        .as_array()
        .unwrap_or_else(|| panic!("result without people: {r}"));
    people
        .iter()
        .map(|p| {
            let pose = p["pose"].as_array().expect("person's pose").len();
            let face = p["face"].as_array().expect("person's face").len();
            assert_eq!(pose, 33, "{p}");
            assert!(face == 0 || face == 468, "{p}");
            for hand in ["left_hand", "right_hand"] {
                let n = p[hand].as_array().expect("person's hand").len();
                assert!(n == 0 || n == 21, "{hand}: {n}");
            }
            p["id"].as_u64().expect("person's id")
        })
        .collect()
}

/// Streams the clip at `people` = [`PEOPLE`] and checks what the pipeline
/// gives reliably: someone on every result, at most [`PEOPLE`] people, distinct
/// ids in each, the top-level pose the first person's; over the clip
/// [`PEOPLE`] to [`MAX_IDS_SEEN`] ids and [`PEOPLE`] people on
/// [`MIN_FULL_SHARE`] of the results. Prints the figures per frame; returns
/// the ids seen.
async fn stream_clip(conn: &mut WsConn, frames: &[Bytes], label: &str) -> BTreeSet<u64> {
    control(conn, json!({"type": "config", "people": PEOPLE})).await;
    let mut counts = Vec::new();
    let mut all_ids = BTreeSet::new();
    for (i, jpeg) in frames.iter().enumerate() {
        let r = result_of(conn, i as u32, jpeg).await;
        let ids = people_ids(&r);
        println!("{label} frame {i:3}: {} people, ids {ids:?}", ids.len());
        assert!((1..=PEOPLE).contains(&ids.len()), "frame {i}: {ids:?}");
        let distinct: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "frame {i}: an id twice: {ids:?}");
        if !ids.is_empty() {
            assert_eq!(r["pose"], r["people"][0]["pose"], "frame {i}");
        }
        counts.push(ids.len());
        all_ids.extend(ids);
    }
    let full = counts.iter().filter(|n| **n == PEOPLE).count();
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    println!(
        "{label}: {} results, mean {mean:.2} people, {full} with {PEOPLE}, ids seen {all_ids:?}",
        counts.len()
    );
    assert!(
        (PEOPLE..=MAX_IDS_SEEN).contains(&all_ids.len()),
        "{label}: ids seen {all_ids:?}"
    );
    assert!(
        full as f64 >= MIN_FULL_SHARE * counts.len() as f64,
        "{label}: {PEOPLE} people on only {full} of {} results: {counts:?}",
        counts.len()
    );
    all_ids
}

#[actix_web::test]
async fn people_through_the_local_pool() {
    let _serial = ONE_AT_A_TIME.lock();
    let frames = clip_frames();
    let server = TestServer::start(config()).await;
    let cookie = login(&server, PASSWORD).await;

    let mut conn = ws_connect(&server, Some(&cookie), Some(&server.origin()))
        .await
        .expect("WebSocket refused");
    let hello = next_answer(&mut conn, ANSWER).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["config"]["people"], 1, "{hello}");
    assert_eq!(hello["config"]["max_people"], 6, "{hello}");

    // Out of range: refused, and the session keeps its single person.
    for bad in [0, 7] {
        control(&mut conn, json!({"type": "config", "people": bad})).await;
        let e = next_answer(&mut conn, ANSWER).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], "bad_control", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("people must be between 1 and 6"),
            "{message}"
        );
    }
    let r = result_of(&mut conn, 1000, &frames[0]).await;
    assert!(r.get("people").is_none(), "{r}");

    let tracked = stream_clip(&mut conn, &frames, "local").await;

    // Fewer people mid-stream, then one again: the session keeps its
    // tracking state, so the oldest people go on under their ids (the
    // others are dropped), and one person is plain Holistic.
    control(&mut conn, json!({"type": "config", "people": 2})).await;
    for seq in 2000..2003 {
        let r = result_of(&mut conn, seq, &frames[(seq - 2000) as usize]).await;
        let ids = people_ids(&r);
        println!("local people=2 frame {seq}: ids {ids:?}");
        assert!(!ids.is_empty() && ids.len() <= 2, "{r}");
        assert!(ids.iter().all(|id| tracked.contains(id)), "new ids: {r}");
    }
    control(&mut conn, json!({"type": "config", "people": 1})).await;
    let r = result_of(&mut conn, 3000, &frames[0]).await;
    assert!(r.get("people").is_none(), "{r}");
    assert_eq!(r["pose"].as_array().unwrap().len(), 33, "{r}");

    // A client that never asks for people never sees the key.
    let mut plain = open_session(&server, &cookie).await;
    for seq in 0..2 {
        let r = result_of(&mut plain, seq, &frames[seq as usize]).await;
        assert!(r.get("people").is_none(), "{r}");
        assert_eq!(r["pose"].as_array().unwrap().len(), 33, "{r}");
    }
    drop((conn, plain));

    // `loadgen --people 3` asks for them and counts them.
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<_> = [0, 60]
        .iter()
        .map(|i| {
            let path = dir.path().join(format!("frame{i}.jpg"));
            std::fs::write(&path, &frames[*i]).unwrap();
            path
        })
        .collect();
    let args = LoadgenArgs {
        url: server.base(),
        password: PASSWORD.into(),
        clients: 1,
        fps: 5.0,
        duration: 2.0,
        images,
        size: "original".into(),
        max_outstanding: 1,
        json: true,
        people: PEOPLE,
        transport: loadgen::Transport::Ws,
        codec: loadgen::CodecArg::H264,
        bitrate_kbps: 1000,
    };
    let report = loadgen::run(&args).await.expect("loadgen");
    println!("{}", report.to_text());
    let people = report.people.as_ref().expect("people counted");
    assert_eq!(people.asked, PEOPLE);
    assert!(report.results > 0, "{}", report.to_text());
    assert_eq!(
        people.histogram.values().sum::<u64>(),
        report.results,
        "every result carried people: {}",
        report.to_text()
    );
    assert!(
        (1.0..=PEOPLE as f64).contains(&people.mean),
        "{}",
        report.to_text()
    );
    assert!(report.errors.is_empty(), "{}", report.to_text());
}

#[actix_web::test]
async fn people_through_the_redis_pool() {
    let _serial = ONE_AT_A_TIME.lock();
    let frames = clip_frames();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::spawn();
    let mut worker = spawn_worker(&redis.url(), "mp-w1", dir.path());
    let mut c = config();
    c.pool.kind = PoolKind::Redis;
    c.pool.remote.redis_url = Some(redis.url());
    let server = TestServer::start(c).await;
    worker_ready(&mut worker, &redis.url()).await;
    let cookie = login(&server, PASSWORD).await;

    let mut conn = open_session(&server, &cookie).await;
    stream_clip(&mut conn, &frames, "redis").await;
    control(&mut conn, json!({"type": "config", "people": 1})).await;
    let r = result_of(&mut conn, 3000, &frames[0]).await;
    assert!(r.get("people").is_none(), "{r}");
    worker.assert_running();
}
