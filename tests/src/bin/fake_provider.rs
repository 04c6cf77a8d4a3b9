//! A fast fake of Meta's `/messages` endpoint for deploy/bench. The bench's
//! template renders the publish time (µs since the epoch) as the message
//! text, so each request gives one queue→provider latency.
//! `fake_provider ADDR` — `GET /stats` for figures, `POST /reset` to clear
//! (`POST /reset?latency_ms=N`: each send answers N ms late from then on, a
//! slow provider).
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use hdrhistogram::Histogram;

struct Stats {
    latency_us: Histogram<u64>,
    /// How late each send answers.
    answer_ms: u64,
    count: u64,
    first_us: u64,
    last_us: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn send(body: web::Json<serde_json::Value>, stats: web::Data<Mutex<Stats>>) -> HttpResponse {
    let now = now_us();
    let answer_ms = stats.lock().map(|s| s.answer_ms).unwrap_or(0);
    if answer_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(answer_ms)).await;
    }
    let sent_us = body["text"]["body"]
        .as_str()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Ok(mut s) = stats.lock() {
        if s.count == 0 {
            s.first_us = now;
        }
        s.count += 1;
        s.last_us = now;
        if let Some(t) = sent_us {
            let _ = s.latency_us.record(now.saturating_sub(t).max(1));
        }
    }
    HttpResponse::Ok().json(serde_json::json!({
        "messaging_product": "whatsapp",
        "messages": [{"id": format!("wamid.bench.{now}")}]
    }))
}

async fn stats(stats: web::Data<Mutex<Stats>>) -> HttpResponse {
    let Ok(s) = stats.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let h = &s.latency_us;
    let span_s = (s.last_us.saturating_sub(s.first_us)) as f64 / 1e6;
    HttpResponse::Ok().json(serde_json::json!({
        "count": s.count,
        "span_s": span_s,
        "per_sec": if span_s > 0.0 { (s.count as f64 / span_s).round() } else { 0.0 },
        "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
    }))
}

async fn reset(
    stats: web::Data<Mutex<Stats>>,
    q: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    if let Ok(mut s) = stats.lock() {
        s.answer_ms = q
            .get("latency_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        s.latency_us.reset();
        s.count = 0;
        s.first_us = 0;
        s.last_us = 0;
    }
    HttpResponse::Ok().finish()
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let stats = web::Data::new(Mutex::new(Stats {
        latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).map_err(std::io::Error::other)?,
        count: 0,
        first_us: 0,
        last_us: 0,
        answer_ms: 0,
    }));
    HttpServer::new(move || {
        App::new()
            .app_data(stats.clone())
            .route("/stats", web::get().to(stats_handler))
            .route("/reset", web::post().to(reset))
            .route("/{tail:.*}", web::post().to(send))
    })
    .workers(1)
    .bind(addr)?
    .run()
    .await
}

async fn stats_handler(s: web::Data<Mutex<Stats>>) -> HttpResponse {
    stats(s).await
}
