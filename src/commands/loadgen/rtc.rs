//! `holistream loadgen --transport rtc`: each client is a real WebRTC peer
//! (the Rust client of [`crate::actors::rtc::client`]): WHIP with the entry
//! code as bearer token, the images encoded as H.264 or VP8 at the rate,
//! results on the data channel, matched to their frame by `rtp_ts`.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ClientReport, Incoming, LoadReport, LoadgenArgs, parse_size, record, summarise};
use crate::actors::rtc::client::{ClientEvent, ClientOptions, RtcClient};
use crate::model::I420Picture;

/// How long a client waits for its peer connection and data channel.
const CONNECT_WITHIN: Duration = Duration::from_secs(20);

/// Answers still coming after the last frame: one frame's run at most, and
/// the next `stats` message.
const DRAIN: Duration = Duration::from_millis(2500);

/// Runs `args.clients` WebRTC clients against `base`.
pub async fn run(args: &LoadgenArgs, base: &str) -> anyhow::Result<LoadReport> {
    let pictures = prepare_pictures(&args.images, &args.size)?;
    let server = server_ip(base)?;
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (args, pictures, base) = (args.clone(), pictures.clone(), base.to_string());
        tasks.push(actix_web::rt::spawn(async move {
            run_client(i, &base, server, &args, &pictures).await
        }));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await.context("client task panicked")??);
    }
    let frame_bytes = pictures[0].planes().len();
    Ok(summarise(args, frame_bytes, clients))
}

/// The images as pictures of `size` (even sides: H.264 wants them).
fn prepare_pictures(paths: &[PathBuf], size: &str) -> anyhow::Result<Vec<I420Picture>> {
    let Some((w, h)) = parse_size(size)? else {
        bail!("--transport rtc needs --size WxH (the video's size)");
    };
    if w % 2 != 0 || h % 2 != 0 {
        bail!("--size {size}: a video's sides must be even");
    }
    paths
        .iter()
        .map(|path| {
            let image = image::open(path)
                .with_context(|| format!("decoding {}", path.display()))?
                .to_rgb8();
            let resized =
                image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle);
            Ok(I420Picture::from_rgb(&resized))
        })
        .collect()
}

/// The server's address, from `--url`'s host.
fn server_ip(base: &str) -> anyhow::Result<IpAddr> {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .context("--url must start with http:// or https://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .map(|a| a.ip())
        .with_context(|| format!("{authority} has no address"))
}

async fn run_client(
    index: usize,
    base: &str,
    server: IpAddr,
    args: &LoadgenArgs,
    pictures: &[I420Picture],
) -> anyhow::Result<ClientReport> {
    let (w, h) = (pictures[0].width(), pictures[0].height());
    let opts = ClientOptions {
        codec: args.codec.into(),
        bitrate_kbps: args.bitrate_kbps,
        fps: args.fps.ceil() as u32,
        data_channel: true,
        width: w,
        height: h,
    };
    let (pending, offer) = RtcClient::offer(server, opts)?;
    let http = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let bearer = format!("Bearer {}", args.password);
    let mut resp = http
        .post(format!("{base}/whip"))
        .insert_header(("Content-Type", "application/sdp"))
        .insert_header(("Authorization", bearer.as_str()))
        .send_body(offer)
        .await
        .map_err(|e| anyhow::anyhow!("POST /whip: {e}"))?;
    let answer = resp
        .body()
        .limit(1 << 20)
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    if resp.status() != awc::http::StatusCode::CREATED {
        bail!(
            "POST /whip: {} {}",
            resp.status(),
            String::from_utf8_lossy(&answer)
        );
    }
    let location = resp
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .context("the answer has no Location")?
        .to_string();
    let mut client = pending.accept(std::str::from_utf8(&answer)?)?;

    // Up: ICE, DTLS, the channel.
    tokio::time::timeout(CONNECT_WITHIN, async {
        loop {
            match client.events.recv().await {
                Some(ClientEvent::ChannelOpen) => return Ok(()),
                Some(ClientEvent::Closed(why)) => bail!("connection failed: {why}"),
                Some(_) => {}
                None => bail!("client gone"),
            }
        }
    })
    .await
    .context("no WebRTC connection within 20 s (is the UDP port reachable?)")??;
    if args.people > 1 {
        let config = serde_json::json!({"type": "config", "people": args.people});
        client.send_text(config.to_string());
    }

    let mut report = ClientReport::default();
    // When each RTP timestamp was sent: a result's latency.
    let mut sent_at: HashMap<u32, Instant> = HashMap::new();
    let step = (90_000.0 / args.fps).round() as u32;
    // A random-looking start, as a browser's (the wrap must not matter).
    let mut rtp_ts: u32 = 0xfff0_0000u32.wrapping_add(index as u32 * 7919);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.fps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let send_until = started + Duration::from_secs_f64(args.duration);
    let drain_until = send_until + DRAIN;
    let mut n = 0usize;
    loop {
        let now = Instant::now();
        if now >= drain_until {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if now < send_until => {
                let picture = &pictures[(n + index) % pictures.len()];
                client.send_picture(picture.clone(), rtp_ts);
                sent_at.insert(rtp_ts, Instant::now());
                rtp_ts = rtp_ts.wrapping_add(step);
                report.sent += 1;
                n += 1;
            }
            event = client.events.recv() => match event {
                Some(ClientEvent::Text(text)) => {
                    let msg: Incoming = serde_json::from_str(&text)
                        .context("server message is not the expected JSON")?;
                    let latency = msg
                        .rtp_ts
                        .and_then(|ts| sent_at.get(&ts))
                        .map(|at| at.elapsed().as_secs_f64() * 1e3);
                    record(&mut report, msg, latency, Instant::now() >= send_until);
                }
                Some(ClientEvent::Closed(why)) => bail!("connection closed: {why}"),
                Some(_) => {}
                None => bail!("client gone"),
            },
            _ = tokio::time::sleep_until(drain_until.into()) => {}
        }
    }
    let _ = http
        .delete(format!("{base}{location}"))
        .insert_header(("Authorization", bearer.as_str()))
        .send()
        .await;
    report.sent_bytes = client.close();
    report.result_fps = report.results as f64 / args.duration;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_address_comes_from_the_url() {
        assert_eq!(
            server_ip("http://127.0.0.1:8080").unwrap().to_string(),
            "127.0.0.1"
        );
        assert_eq!(server_ip("https://localhost").unwrap().is_loopback(), true);
        assert!(server_ip("ftp://x").is_err());
    }

    #[test]
    fn odd_sizes_are_refused_for_video() {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astronaut.png");
        assert!(prepare_pictures(std::slice::from_ref(&p), "641x480").is_err());
        assert!(prepare_pictures(std::slice::from_ref(&p), "original").is_err());
        let pics = prepare_pictures(&[p], "320x240").unwrap();
        assert_eq!((pics[0].width(), pics[0].height()), (320, 240));
    }
}
