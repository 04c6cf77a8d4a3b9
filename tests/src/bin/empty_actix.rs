//! The ceiling for deploy/bench: actix-web with the ingest's worker count and
//! a handler that reads the body and answers 202 with a small JSON, doing
//! nothing else. `empty_actix ADDR WORKERS`
use actix_web::{App, HttpResponse, HttpServer, web};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    HttpServer::new(|| {
        App::new().route(
            "/{tail:.*}",
            web::post().to(|body: web::Bytes| async move {
                HttpResponse::Accepted()
                    .content_type("application/json")
                    .body(format!(r#"{{"status":"queued","bytes":{}}}"#, body.len()))
            }),
        )
    })
    .workers(workers)
    .bind(addr)?
    .run()
    .await
}
