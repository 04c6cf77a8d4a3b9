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
//! With `--callback URL --app-secret S`, every accepted send is followed,
//! as at Meta, by a signed `sent` status callback to URL (ingest's
//! `/api/callback/meta`) that echoes the request's `biz_opaque_callback_data`
//! (providers.md A5, B7): what settles a send whose answer a killed
//! dispatcher never read.
//!
//! `drill_provider ADDR [--latency-ms N] [--callback URL --app-secret S]`
//! - `POST /{version}/{phone_number_id}/messages`: the send;
//! - `POST /mode/ok` | `POST /mode/fail`: answer 200 / 500 to every send;
//! - `POST /phase/{name}`: label what follows (sends are counted per phase);
//! - `GET /stats`: JSON figures; `GET /delivered`: accepted order numbers, one a line;
//! - `POST /reset`: forget everything.
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

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
    callback: Option<Callback>,
}

/// Where and how status callbacks go.
struct Callback {
    url: String,
    secret: Vec<u8>,
    http: reqwest::Client,
}

impl Callback {
    /// Meta's `sent` status for one message, signed with the app secret;
    /// retried a few times (Meta retries for days).
    async fn sent(&self, wamid: String, key: String, sent: &std::sync::atomic::AtomicU64) {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "drill",
            "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
                "statuses": [{"id": wamid, "status": "sent",
                    "timestamp": (now_ms() / 1000).to_string(), "recipient_id": "70000000000",
                    "biz_opaque_callback_data": key}]}}]}]})
        .to_string();
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return;
        };
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        for attempt in 0..5u32 {
            let answer = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }
}

static CALLBACKS_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let order = parsed.as_ref().and_then(order_number);
    let key = parsed
        .as_ref()
        .and_then(|b| b["biz_opaque_callback_data"].as_str())
        .map(str::to_string);
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
    let wamid = format!("wamid.drill.{seq}");
    if let (Some(key), Some(_)) = (key, &p.callback) {
        let p = p.clone();
        let wamid = wamid.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(cb) = &p.callback {
                cb.sent(wamid, key, &CALLBACKS_SENT).await;
            }
        });
    }
    HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": "drill", "wa_id": "drill"}],
        "messages": [{"id": wamid}]
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
        "callbacks_sent": CALLBACKS_SENT.load(std::sync::atomic::Ordering::Relaxed),
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
    let (mut url, mut secret) = (None, None);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--latency-ms", Some(ms)) if ms.parse::<u64>().is_ok() => {
                latency = Duration::from_millis(ms.parse().unwrap_or(0))
            }
            ("--callback", Some(u)) => url = Some(u),
            ("--app-secret", Some(s)) => secret = Some(s),
            _ => {
                eprintln!(
                    "usage: drill_provider ADDR [--latency-ms N] [--callback URL --app-secret S]"
                );
                std::process::exit(2);
            }
        }
    }
    let callback = match (url, secret) {
        (Some(url), Some(secret)) => Some(Callback {
            url,
            secret: secret.into_bytes(),
            http: reqwest::Client::new(),
        }),
        (None, None) => None,
        _ => {
            eprintln!("--callback and --app-secret go together");
            std::process::exit(2);
        }
    };
    let provider = web::Data::new(Provider {
        state: Mutex::new(State::default()),
        latency,
        callback,
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
