//! A counting fake of Meta's WhatsApp Cloud API for the failure drills
//! (deploy/drills). The drills' template renders the order number as the
//! last word of the message text, so every send names the webhook it came
//! from:
//! - `delivered` = distinct order numbers accepted (answered 2xx);
//! - `duplicated` = 2xx sends of an order number already accepted.
//!
//! A send counts as accepted when its request arrives (as at Meta, which
//! delivers whatever it received, whether or not the answer reaches the
//! caller); `--latency-ms` delays only the answer.
//!
//! `drill_provider ADDR [--latency-ms N]`
//! - `POST /{version}/{phone_number_id}/messages`: the send;
//! - `POST /mode/ok` | `POST /mode/fail`: answer 200 / 500 to every send;
//! - `POST /phase/{name}`: label what follows (sends are counted per phase);
//! - `GET /stats`: JSON figures; `GET /delivered`: accepted order numbers, one a line;
//! - `POST /reset`: forget everything.
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;

/// Duplicates listed in /stats (the count is always complete).
const LISTED_DUPLICATES: usize = 200;

#[derive(Default)]
struct Phase {
    accepted: u64,
    answered_500: u64,
    first_ms: Option<u64>,
    last_ms: Option<u64>,
}

#[derive(Default)]
struct State {
    fail: bool,
    phase: String,
    requests: u64,
    accepted: u64,
    answered_500: u64,
    unreadable: u64,
    /// Order number → (first accepted at, times accepted).
    orders: HashMap<u64, (u64, u64)>,
    duplicates: Vec<(u64, u64, u64)>,
    phases: BTreeMap<String, Phase>,
}

struct Provider {
    state: Mutex<State>,
    latency: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The order number: the last word of the text message.
fn order_number(body: &serde_json::Value) -> Option<u64> {
    body["text"]["body"]
        .as_str()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

async fn send(body: web::Bytes, p: web::Data<Provider>) -> HttpResponse {
    let now = now_ms();
    let order = serde_json::from_slice(&body)
        .ok()
        .as_ref()
        .and_then(order_number);
    let (fail, seq) = {
        let Ok(mut s) = p.state.lock() else {
            return HttpResponse::InternalServerError().finish();
        };
        s.requests += 1;
        let seq = s.requests;
        let fail = s.fail;
        let phase = s.phase.clone();
        if fail {
            s.answered_500 += 1;
            s.phases.entry(phase).or_default().answered_500 += 1;
        } else if let Some(n) = order {
            s.accepted += 1;
            let entry = s.orders.entry(n).or_insert((now, 0));
            entry.1 += 1;
            let (first, times) = *entry;
            if times > 1 && s.duplicates.len() < LISTED_DUPLICATES {
                s.duplicates.push((n, first, now));
            }
            let ph = s.phases.entry(phase).or_default();
            ph.accepted += 1;
            ph.first_ms.get_or_insert(now);
            ph.last_ms = Some(now);
        } else {
            s.unreadable += 1;
        }
        (fail, seq)
    };
    if !p.latency.is_zero() {
        tokio::time::sleep(p.latency).await;
    }
    if fail {
        // Meta's answer when its side breaks: code 1 is transient (providers.md B1).
        return HttpResponse::InternalServerError().json(json!({
            "error": {"message": "An unknown error has occurred.", "type": "OAuthException",
                      "code": 1, "fbtrace_id": "drill"}
        }));
    }
    if order.is_none() {
        return HttpResponse::BadRequest().json(json!({
            "error": {"message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100}
        }));
    }
    HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": "drill", "wa_id": "drill"}],
        "messages": [{"id": format!("wamid.drill.{seq}")}]
    }))
}

async fn stats(p: web::Data<Provider>) -> HttpResponse {
    let Ok(s) = p.state.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let phases: serde_json::Map<String, serde_json::Value> = s
        .phases
        .iter()
        .map(|(name, ph)| {
            (
                name.clone(),
                json!({"accepted": ph.accepted, "answered_500": ph.answered_500,
                       "first_ms": ph.first_ms, "last_ms": ph.last_ms}),
            )
        })
        .collect();
    let delivered = s.orders.len() as u64;
    HttpResponse::Ok().json(json!({
        "mode": if s.fail { "fail" } else { "ok" },
        "phase": s.phase,
        "requests": s.requests,
        "accepted": s.accepted,
        "answered_500": s.answered_500,
        "unreadable": s.unreadable,
        "delivered": delivered,
        "duplicated": s.accepted - delivered,
        "phases": phases,
        "duplicates": s.duplicates.iter()
            .map(|(n, first, again)| json!({"order": n, "first_ms": first, "again_ms": again}))
            .collect::<Vec<_>>(),
    }))
}

async fn delivered(p: web::Data<Provider>) -> HttpResponse {
    let Ok(s) = p.state.lock() else {
        return HttpResponse::InternalServerError().finish();
    };
    let mut ids: Vec<u64> = s.orders.keys().copied().collect();
    ids.sort_unstable();
    let text: String = ids.iter().map(|n| format!("{n}\n")).collect();
    HttpResponse::Ok().content_type("text/plain").body(text)
}

async fn mode(path: web::Path<String>, p: web::Data<Provider>) -> HttpResponse {
    let fail = match path.as_str() {
        "ok" => false,
        "fail" => true,
        _ => return HttpResponse::NotFound().body("mode is ok or fail"),
    };
    match p.state.lock() {
        Ok(mut s) => {
            s.fail = fail;
            HttpResponse::Ok().finish()
        }
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn phase(path: web::Path<String>, p: web::Data<Provider>) -> HttpResponse {
    match p.state.lock() {
        Ok(mut s) => {
            s.phase = path.into_inner();
            HttpResponse::Ok().finish()
        }
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

async fn reset(p: web::Data<Provider>) -> HttpResponse {
    match p.state.lock() {
        Ok(mut s) => {
            *s = State::default();
            HttpResponse::Ok().finish()
        }
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18190".into());
    let mut latency = Duration::ZERO;
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--latency-ms", Some(ms)) => latency = Duration::from_millis(ms),
            _ => {
                eprintln!("usage: drill_provider ADDR [--latency-ms N]");
                std::process::exit(2);
            }
        }
    }
    let provider = web::Data::new(Provider {
        state: Mutex::new(State::default()),
        latency,
    });
    HttpServer::new(move || {
        App::new()
            .app_data(provider.clone())
            .app_data(web::PayloadConfig::new(1 << 20))
            .route("/stats", web::get().to(stats))
            .route("/delivered", web::get().to(delivered))
            .route("/mode/{mode}", web::post().to(mode))
            .route("/phase/{name}", web::post().to(phase))
            .route("/reset", web::post().to(reset))
            .route(
                "/{version}/{phone_number_id}/messages",
                web::post().to(send),
            )
    })
    .workers(1)
    .bind(addr)?
    .run()
    .await
}
