//! The admin console: server-rendered HTML pages on the admin listener
//! (`admin.listen`, never the public port), under `/console`. Signing in
//! with the admin token starts a session ([`session`]); every
//! state-changing form carries the session's CSRF token. The pages work
//! without JavaScript (none is served): forms post, the server redirects,
//! a running replay's page refreshes itself. Personal data is masked as in
//! the admin API; no phone, e-mail or key appears in a page or a URL.
//!
//! Pages: [`overview`] (rates, queue depths, outcomes of the last hour,
//! channel health, balances), [`dead_letters`] (filter, inspect, replay
//! with progress, purge with confirmation), [`events`] (an event's journal
//! as a timeline, by id or the source's record id) and [`tenants`]
//! (channels and provider accounts, their health and recent failures; no
//! secret shown).

pub mod dead_letters;
pub mod events;
pub mod jobs;
pub mod overview;
pub mod session;
pub mod tenants;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError, web};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::admin::AdminState;
pub use session::Session;

/// Every console route, under `/console` on the admin listener.
pub fn scope() -> impl actix_web::dev::HttpServiceFactory {
    let get = |path: &str, allow: &'static str| {
        web::resource(path).default_service(web::to(move || not_allowed(allow)))
    };
    web::scope("/console")
        .wrap(
            actix_web::middleware::DefaultHeaders::new()
                .add(("Content-Security-Policy", CSP))
                .add(("X-Frame-Options", "DENY"))
                .add(("X-Content-Type-Options", "nosniff"))
                .add(("Referrer-Policy", "no-referrer"))
                .add(("Cache-Control", "no-store")),
        )
        .service(get("", "GET").route(web::get().to(overview::page)))
        .service(get("/", "GET").route(web::get().to(overview::page)))
        .service(
            get("/sign-in", "GET, POST")
                .route(web::get().to(sign_in_page))
                .route(web::post().to(sign_in)),
        )
        .service(get("/sign-out", "POST").route(web::post().to(sign_out)))
        .service(get("/dead-letters", "GET").route(web::get().to(dead_letters::list)))
        .service(get("/dead-letters/action", "POST").route(web::post().to(dead_letters::action)))
        .service(get("/dead-letters/{id}", "GET").route(web::get().to(dead_letters::show)))
        .service(get("/jobs/{id}", "GET").route(web::get().to(jobs::page)))
        .service(get("/events", "GET").route(web::get().to(events::page)))
        .service(get("/tenants", "GET").route(web::get().to(tenants::page)))
        .service(get("/pauses", "POST").route(web::post().to(tenants::pause_action)))
        .default_service(web::to(|| async {
            ConsoleError::NotFound("no such page".into()).error_response()
        }))
}

/// No scripts, no frames, no other origin: styles inline, forms to here.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn not_allowed(allow: &'static str) -> HttpResponse {
    let mut r = error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; allowed: {allow}"),
    );
    r.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    r
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("sign in first")]
    SignIn,
    #[error(
        "the form is missing its CSRF token or has another session's: reload the page and try again"
    )]
    Csrf,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignIn => StatusCode::SEE_OTHER,
            ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ConsoleError::SignIn => redirect("/console/sign-in"),
            e => error_page(e.status_code(), &e.to_string()),
        }
    }
}

impl From<crate::delivery_state::StoreError> for ConsoleError {
    fn from(e: crate::delivery_state::StoreError) -> Self {
        ConsoleError::Unavailable(e.to_string())
    }
}

impl From<crate::admin::AdminError> for ConsoleError {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError as A;
        match e {
            A::Unauthorized => ConsoleError::SignIn,
            A::BadRequest(m) => ConsoleError::BadRequest(m),
            A::NotFound(m) => ConsoleError::NotFound(m),
            A::Unavailable(m) => ConsoleError::Unavailable(m),
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Vestnik: " (status.as_u16()) } style { (PreEscaped(STYLE)) } }
            body {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error { (message) }
                    p { a href="/console" { "Back to the console" } }
                }
            }
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body.into_string())
}

pub fn redirect(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, to.to_string()))
        .finish()
}

pub fn html_page(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

/// A form's fields in order, repeated names kept (checkboxes).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v == "on" || v == "yes" || v == "true")
    }
}

/// The page frame: navigation, the sign-out form, the content.
pub fn layout(title: &str, session: &Session, current: &str, content: Markup) -> Markup {
    layout_with(title, session, current, html! {}, content)
}

/// [`layout`] with more in the page's head (a refresh).
pub fn layout_with(
    title: &str,
    session: &Session,
    current: &str,
    head: Markup,
    content: Markup,
) -> Markup {
    let nav = [
        ("/console", "Overview"),
        ("/console/dead-letters", "Dead letters"),
        ("/console/events", "Events"),
        ("/console/tenants", "Tenants"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Vestnik: " (title) }
                style { (PreEscaped(STYLE)) }
                (head)
            }
            body {
                header {
                    strong.brand { "Vestnik" }
                    nav {
                        @for (href, name) in nav {
                            @if href == current {
                                a.current href=(href) aria-current="page" { (name) }
                            } @else {
                                a href=(href) { (name) }
                            }
                        }
                    }
                    form.signout method="post" action="/console/sign-out" {
                        (csrf(session))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

pub const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{display:flex;gap:1.5em;align-items:center;background:#1d2330;color:#fff;padding:.6em 1.2em}
header nav a{color:#c9d3e6;margin-right:1em;text-decoration:none}
header nav a.current{color:#fff;font-weight:600;border-bottom:2px solid #6ea8fe}
.brand{font-size:1.1em}.signout{margin-left:auto}
main{padding:1em 1.5em;max-width:1200px}
h1{font-size:1.4em;margin:.3em 0 .8em}h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}
th,td{border-bottom:1px solid #e3e6eb;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin-bottom:1em}
.card{background:#fff;border:1px solid #e3e6eb;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.5em}
.bad{color:#b42318}.ok{color:#067647}.warn{color:#b54708}
.badge{display:inline-block;border-radius:4px;padding:0 .4em;font-size:.85em;background:#eef1f5}
.badge.uncertain{background:#fef0c7;color:#93370d}.badge.paused{background:#fee4e2;color:#b42318}
.badge.healthy{background:#dcfae6;color:#067647}
form.inline{display:inline}
fieldset{border:1px solid #e3e6eb;background:#fff;margin-bottom:1em}
label{margin-right:1em}input,select,button{font:inherit}
button{cursor:pointer;padding:.2em .8em}button.danger{color:#b42318}
.error{color:#b42318;font-weight:600}.notice{background:#fff;border-left:4px solid #6ea8fe;padding:.5em 1em}
pre{background:#fff;border:1px solid #e3e6eb;padding:.8em;overflow:auto}
.bar{display:inline-block;background:#6ea8fe;height:.8em}
svg.spark{background:#fff;border:1px solid #e3e6eb}
"#;

/// The sign-in page (also after a wrong token).
fn sign_in_markup(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Vestnik: sign in" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header { strong.brand { "Vestnik" } }
                main {
                    h1 { "Sign in" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/console/sign-in" {
                        fieldset {
                            label for="token" { "Admin token" }
                            input #token type="password" name="token" autocomplete="current-password" required autofocus;
                            button type="submit" { "Sign in" }
                        }
                    }
                    p { "The token is the dispatcher's " code { "admin.token" } "." }
                }
            }
        }
    }
}

async fn sign_in_page() -> HttpResponse {
    html_page(sign_in_markup(None))
}

async fn sign_in(
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    let form = Form::parse(&body);
    let token = form.get("token").unwrap_or_default().trim();
    if !state.is_token(token) {
        tracing::warn!("console: sign-in with a wrong token");
        return Ok(HttpResponse::Unauthorized()
            .content_type("text/html; charset=utf-8")
            .body(sign_in_markup(Some("Wrong token.")).into_string()));
    }
    let (cookie, _) = Session::start(&state.store).await?;
    tracing::info!("console: signed in");
    let mut r = redirect("/console");
    r.add_cookie(&cookie)
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    Ok(r)
}

async fn sign_out(
    session: Session,
    body: web::Bytes,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ConsoleError> {
    session.check(&Form::parse(&body))?;
    session.end(&state.store).await?;
    let mut r = redirect("/console/sign-in");
    r.add_cookie(&session::removal())
        .map_err(|e| ConsoleError::Unavailable(e.to_string()))?;
    Ok(r)
}

/// "3 min", "2 h 5 min", "4 d".
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A timestamp as the pages show it (UTC).
pub fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
