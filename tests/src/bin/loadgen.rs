//! HTTP/1.1 keep-alive load generator for deploy/bench.
//!
//! `loadgen URL BODY_FILE --rate R --seconds S --connections C [--content-type T] [--count N] [--acked FILE]`
//! - `--rate 0`: closed loop, as fast as C connections go (throughput ceiling);
//! - `--rate R`: open loop, request i is due at start + i/R; latency is taken
//!   from the due time, so a stalled server is not hidden (no coordinated omission);
//! - `--count N`: N requests in all (instead of R × S, or of S seconds' worth);
//! - `--first F`: request numbers start at F (two loadgens, two ingests,
//!   no order twice).
//!
//! `{n}` in the body is replaced by the request number, so every webhook is a
//! different order (`{n7}`: the same in seven digits, for a phone of its
//! own). Prints one JSON line of figures. `--acked FILE` writes the
//! number of every request answered 2xx, one a line (the failure drills check
//! those id by id).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

struct Args {
    host: String,
    path: String,
    body: String,
    content_type: String,
    rate: u64,
    seconds: u64,
    connections: usize,
    count: Option<u64>,
    first: u64,
    acked_file: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let url = it.next().ok_or("URL missing")?;
    let body_file = it.next().ok_or("BODY_FILE missing")?;
    let body = std::fs::read_to_string(&body_file).map_err(|e| format!("{body_file}: {e}"))?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut a = Args {
        host: host.to_string(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.to_string()
        },
        body,
        content_type: "application/json".into(),
        rate: 0,
        seconds: 10,
        connections: 32,
        count: None,
        first: 0,
        acked_file: None,
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => a.rate = v.parse().map_err(|_| "bad --rate")?,
            "--seconds" => a.seconds = v.parse().map_err(|_| "bad --seconds")?,
            "--connections" => a.connections = v.parse().map_err(|_| "bad --connections")?,
            "--content-type" => a.content_type = v,
            "--count" => a.count = Some(v.parse().map_err(|_| "bad --count")?),
            "--acked" => a.acked_file = Some(v),
            "--first" => a.first = v.parse().map_err(|_| "bad --first")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

struct Stats {
    latency_us: Histogram<u64>,
    status: std::collections::BTreeMap<u16, u64>,
    errors: u64,
    acked: Vec<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!(
                "loadgen: {e}\nusage: loadgen URL BODY_FILE [--rate R] [--seconds S] [--connections C] [--content-type T] [--count N] [--first F] [--acked FILE]"
            );
            std::process::exit(2);
        }
    };
    let stats = Arc::new(Mutex::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        status: Default::default(),
        errors: 0,
        acked: Vec::new(),
    }));
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let total = match (args.count, args.rate) {
        (Some(n), _) => n,
        (None, 0) => u64::MAX,
        (None, r) => r * args.seconds,
    };

    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (args, stats, counter) = (args.clone(), stats.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let n = args.first + i;
                let due = match (i * 1_000_000_000).checked_div(args.rate) {
                    Some(offset_ns) => start + Duration::from_nanos(offset_ns),
                    None => Instant::now(),
                };
                if args.rate == 0 && due >= end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
                let body = args
                    .body
                    .replace("{n}", &n.to_string())
                    .replace("{n7}", &format!("{:07}", n % 10_000_000));
                let req = format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n{}",
                    args.path,
                    args.host,
                    args.content_type,
                    body.len(),
                    body
                );
                let result = exchange(&mut conn, &args.host, req.as_bytes(), &mut buf).await;
                let elapsed = due.elapsed();
                let mut s = stats.lock().await;
                match result {
                    Ok(status) => {
                        *s.status.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            s.acked.push(n);
                        }
                        let _ = s.latency_us.record(elapsed.as_micros().max(1) as u64);
                    }
                    Err(_) => {
                        s.errors += 1;
                        conn = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = start.elapsed().as_secs_f64();
    let s = stats.lock().await;
    let ok: u64 = s
        .status
        .iter()
        .filter(|(k, _)| (200..300).contains(*k))
        .map(|(_, v)| v)
        .sum();
    if let Some(path) = &args.acked_file {
        let mut ids = s.acked.clone();
        ids.sort_unstable();
        let text: String = ids.iter().map(|n| format!("{n}\n")).collect();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("loadgen: {path}: {e}");
            std::process::exit(1);
        }
    }
    let h = &s.latency_us;
    println!(
        "{}",
        serde_json::json!({
            "target_rate": args.rate,
            "seconds": wall,
            "requests": h.len(),
            "ok_2xx": ok,
            "ok_per_sec": (ok as f64 / wall).round(),
            "errors": s.errors,
            "status": s.status.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
            "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
            "p999_ms": h.value_at_quantile(0.999) as f64 / 1000.0,
            "max_ms": h.max() as f64 / 1000.0,
        })
    );
}

/// One request/response on a keep-alive connection (reconnecting as needed).
async fn exchange(
    conn: &mut Option<TcpStream>,
    host: &str,
    req: &[u8],
    buf: &mut [u8],
) -> std::io::Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(host).await?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let stream = conn
        .as_mut()
        .ok_or_else(|| std::io::Error::other("no connection"))?;
    stream.write_all(req).await?;
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        filled += n;
        if let Some(head_end) = find(&buf[..filled], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..head_end]).map_err(std::io::Error::other)?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other("bad status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = head_end + 4 + len;
            while filled < total {
                if filled == buf.len() {
                    return Err(std::io::Error::other("response larger than buffer"));
                }
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed",
                    ));
                }
                filled += n;
            }
            return Ok(status);
        }
        if filled == buf.len() {
            return Err(std::io::Error::other("response head larger than buffer"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
