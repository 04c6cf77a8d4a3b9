//! Message texts per tenant × event kind × channel × locale (minijinja),
//! with built-in defaults so a new tenant works at once: Russian review
//! requests for the order/visit/deal kinds and seed 000's formatted booking
//! message (`booking.rs`) for the booking kinds. Every template is compiled
//! at start-up: a broken template stops the dispatcher with an error naming
//! tenant, kind, locale and part instead of failing at send time.
//! docs/TEMPLATES.md describes the configuration and the context.

mod booking;
mod datetime;

use std::collections::BTreeMap;

use minijinja::{Environment, State, UndefinedBehavior};
use serde_json::{Map, Value, json};
use shared::event::{DateLocale, Event, EventKind, FormatOptions, HideFlag};
use shared::tenant::{
    Channel, LocationConfig, TemplateConfig, TemplateVariant, TenantConfig, WhatsappButton,
    WhatsappHeader,
};

use crate::providers::Body;
use datetime::{Clock, Style};

const KINDS: [EventKind; 9] = [
    EventKind::OrderCompleted,
    EventKind::VisitCompleted,
    EventKind::DealWon,
    EventKind::BookingCreated,
    EventKind::BookingCancelled,
    EventKind::BookingCompleted,
    EventKind::BookingTimeChanged,
    EventKind::BookingPlaceChanged,
    EventKind::PaymentReceived,
];

/// The built-in texts of the non-booking kinds (Russian; a tenant overrides
/// any of them). The booking kinds are formatted by [`booking::render`].
fn default_text(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::OrderCompleted => Some(
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за заказ{% if order_number %} №{{ order_number }}{% endif %}{% if brand %} в «{{ brand }}»{% endif %}! Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}",
        ),
        EventKind::VisitCompleted => Some(
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за визит{% if brand %} в «{{ brand }}»{% endif %}{% if staff %}! Мастер: {{ staff }}{% endif %}. Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}",
        ),
        EventKind::DealWon => Some(
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за покупку{% if brand %} в «{{ brand }}»{% endif %}! Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}",
        ),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {source}")]
    Invalid {
        name: String,
        source: minijinja::Error,
    },
    #[error("template {name}: {reason}")]
    Config { name: String, reason: String },
    #[error("template {name} rendered empty")]
    Empty { name: String },
}

/// An approved WhatsApp template: name, language and the compiled names of
/// its body parameters, header parameter and button values.
#[derive(Debug, Clone)]
struct WhatsappCompiled {
    name: String,
    language: String,
    params: Vec<String>,
    header: Option<WhatsappHeader>,
    buttons: Vec<WhatsappButton>,
    wazzup_template_id: Option<String>,
}

/// The header with each value passed through `f` (compiling, rendering).
fn map_header<E>(
    h: &WhatsappHeader,
    mut f: impl FnMut(&str, &str) -> Result<String, E>,
) -> Result<WhatsappHeader, E> {
    Ok(match h {
        WhatsappHeader::Text { text } => WhatsappHeader::Text {
            text: f("header.text", text)?,
        },
        WhatsappHeader::Image { link } => WhatsappHeader::Image {
            link: f("header.link", link)?,
        },
        WhatsappHeader::Document { link, filename } => WhatsappHeader::Document {
            link: f("header.link", link)?,
            filename: filename
                .as_deref()
                .map(|n| f("header.filename", n))
                .transpose()?,
        },
    })
}

/// The button with its value passed through `f`.
fn map_button<E>(
    b: &WhatsappButton,
    mut f: impl FnMut(&str, &str) -> Result<String, E>,
) -> Result<WhatsappButton, E> {
    Ok(match b {
        WhatsappButton::Url { index, suffix } => WhatsappButton::Url {
            index: *index,
            suffix: f(&format!("buttons[{index}].suffix"), suffix)?,
        },
        WhatsappButton::QuickReply { index, payload } => WhatsappButton::QuickReply {
            index: *index,
            payload: f(&format!("buttons[{index}].payload"), payload)?,
        },
    })
}

/// One variant (the kind's default or one locale's) as compiled template names.
#[derive(Debug, Default)]
struct Variant {
    text: Option<String>,
    sms: Option<String>,
    whatsapp_text: Option<String>,
    whatsapp: Option<WhatsappCompiled>,
    email_subject: Option<String>,
    email_html: Option<String>,
    email_text: Option<String>,
}

impl Variant {
    /// Whether this variant has anything for the channel (then it is used whole).
    fn covers(&self, channel: Channel) -> bool {
        self.text.is_some()
            || match channel {
                Channel::Sms => self.sms.is_some(),
                Channel::Whatsapp => self.whatsapp.is_some() || self.whatsapp_text.is_some(),
                Channel::Email => {
                    self.email_text.is_some()
                        || self.email_subject.is_some()
                        || self.email_html.is_some()
                }
            }
    }

    /// The channel's own text, else `text`.
    fn text_for(&self, channel: Channel) -> Option<&String> {
        let own = match channel {
            Channel::Sms => self.sms.as_ref(),
            Channel::Whatsapp => self.whatsapp_text.as_ref(),
            Channel::Email => self.email_text.as_ref(),
        };
        own.or(self.text.as_ref())
    }
}

/// A tenant's templates for one kind.
#[derive(Debug)]
struct KindTemplates {
    locale: Option<DateLocale>,
    base: Variant,
    locales: Vec<(DateLocale, Variant)>,
}

pub struct Templates {
    env: Environment<'static>,
    kinds: BTreeMap<(String, EventKind), KindTemplates>,
    vars: BTreeMap<String, BTreeMap<String, String>>,
    places: BTreeMap<String, Places>,
}

/// A tenant's own time zone and its branches (`locations`).
#[derive(Debug, Clone, Default)]
pub struct Places {
    pub time_zone: Option<String>,
    pub time_zone_name: Option<String>,
    pub locations: BTreeMap<String, LocationConfig>,
}

impl Places {
    pub fn of(t: &TenantConfig) -> Places {
        Places {
            time_zone: t.time_zone.clone(),
            time_zone_name: t.time_zone_name.clone(),
            locations: t.locations.clone(),
        }
    }
}

/// Where an event comes from, as its tenant's `locations` table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located<'a> {
    /// A branch of the table.
    Known(&'a LocationConfig),
    /// The event names a location the table (which is not empty) lacks:
    /// the tenant's defaults are used and the operator should hear of it.
    Unknown,
    /// No location on the event, or no table for the tenant.
    Unplaced,
}

/// `acme/order_completed/sms` (the kind's default variant) or
/// `acme/order_completed/en-US/sms` (a locale's).
fn name(tenant: &str, kind: EventKind, locale: Option<DateLocale>, part: &str) -> String {
    match locale {
        Some(l) => format!("{tenant}/{kind}/{}/{part}", datetime::locale_tag(l)),
        None => format!("{tenant}/{kind}/{part}"),
    }
}

fn compile_variant(
    env: &mut Environment<'static>,
    tenant: &str,
    kind: EventKind,
    locale: Option<DateLocale>,
    v: &TemplateVariant,
) -> Result<Variant, TemplateError> {
    let mut add = |part: &str, src: &Option<String>| -> Result<Option<String>, TemplateError> {
        let Some(src) = src else { return Ok(None) };
        let n = name(tenant, kind, locale, part);
        env.add_template_owned(n.clone(), src.clone())
            .map_err(|source| TemplateError::Invalid {
                name: n.clone(),
                source,
            })?;
        Ok(Some(n))
    };
    let mut out = Variant {
        text: add("text", &v.text)?,
        sms: add("sms", &v.sms)?,
        whatsapp_text: add("whatsapp_text", &v.whatsapp_text)?,
        whatsapp: None,
        email_subject: add("email_subject", &v.email_subject)?,
        email_html: add("email_html", &v.email_html)?,
        email_text: add("email_text", &v.email_text)?,
    };
    if let Some(wa) = &v.whatsapp {
        if wa.name.trim().is_empty() || wa.language.trim().is_empty() {
            return Err(TemplateError::Config {
                name: name(tenant, kind, locale, "whatsapp"),
                reason: "a WhatsApp template needs a name and a language".into(),
            });
        }
        let mut params = Vec::with_capacity(wa.params.len());
        for (i, p) in wa.params.iter().enumerate() {
            let part = format!("whatsapp.params[{i}]");
            params.push(add(&part, &Some(p.clone()))?.unwrap_or_default());
        }
        let mut compile = |part: &str, src: &str| {
            add(&format!("whatsapp.{part}"), &Some(src.to_string())).map(Option::unwrap_or_default)
        };
        let header = wa
            .header
            .as_ref()
            .map(|h| map_header(h, &mut compile))
            .transpose()?;
        let mut indexes = std::collections::BTreeSet::new();
        let mut buttons = Vec::with_capacity(wa.buttons.len());
        for b in &wa.buttons {
            // Meta's templates have at most 10 buttons.
            if b.index() > 9 || !indexes.insert(b.index()) {
                return Err(TemplateError::Config {
                    name: name(tenant, kind, locale, "whatsapp"),
                    reason: format!("button index {} is out of 0..=9 or given twice", b.index()),
                });
            }
            buttons.push(map_button(b, &mut compile)?);
        }
        let wazzup_template_id = wa
            .wazzup_template_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(String::from);
        out.whatsapp = Some(WhatsappCompiled {
            name: wa.name.clone(),
            language: wa.language.clone(),
            params,
            header,
            buttons,
            wazzup_template_id,
        });
    }
    Ok(out)
}

impl Templates {
    /// No template at all: a placeholder while the tenants are edited
    /// (`Worker::edit_tenants`), never rendered from.
    pub fn empty() -> Templates {
        Templates {
            env: Environment::new(),
            kinds: BTreeMap::new(),
            vars: BTreeMap::new(),
            places: BTreeMap::new(),
        }
    }

    /// Adds each tenant's time zone and branches.
    /// A branch's `vars` are stored merged over its tenant's once here, so
    /// rendering a message borrows them instead of merging per message.
    pub fn with_places<'a>(mut self, places: impl IntoIterator<Item = (&'a str, Places)>) -> Self {
        for (tenant, mut p) in places {
            let own = self.vars.get(tenant);
            for l in p.locations.values_mut().filter(|l| !l.vars.is_empty()) {
                let mut merged = own.cloned().unwrap_or_default();
                merged.append(&mut l.vars);
                l.vars = merged;
            }
            self.places.insert(tenant.to_string(), p);
        }
        self
    }

    /// The event's branch in its tenant's table.
    pub fn locate(&self, e: &Event) -> Located<'_> {
        let Some(places) = self.places.get(&e.tenant) else {
            return Located::Unplaced;
        };
        match e.location.as_deref() {
            Some(id) if !places.locations.is_empty() => places
                .locations
                .get(id)
                .map_or(Located::Unknown, Located::Known),
            _ => Located::Unplaced,
        }
    }

    /// The zone and its label for an event that carries no formatting of
    /// its own: the branch's, else the tenant's, else Moscow's.
    fn zone(&self, e: &Event) -> (String, String) {
        let places = self.places.get(&e.tenant);
        if let Located::Known(l) = self.locate(e)
            && let Some(zone) = &l.time_zone
        {
            let label = l
                .time_zone_name
                .clone()
                .unwrap_or_else(|| shared::tenant::default_zone_name(zone).to_string());
            return (zone.clone(), label);
        }
        let zone = places
            .and_then(|p| p.time_zone.clone())
            .unwrap_or_else(|| FormatOptions::default().time_zone);
        let label = places
            .and_then(|p| p.time_zone_name.clone())
            .unwrap_or_else(|| shared::tenant::default_zone_name(&zone).to_string());
        (zone, label)
    }

    /// The event's time zone: its own formatting's, else its branch's, else
    /// the tenant's, else Moscow (quiet hours are kept in it).
    pub fn time_zone(&self, e: &Event) -> String {
        match &e.format {
            Some(f) => f.time_zone.clone(),
            None => self.zone(e).0,
        }
    }

    /// The tenant's values with its branch's over them.
    fn vars_for(&self, e: &Event) -> Option<&BTreeMap<String, String>> {
        match self.locate(e) {
            Located::Known(l) if !l.vars.is_empty() => Some(&l.vars),
            _ => self.vars.get(&e.tenant),
        }
    }

    /// Compiles the defaults and every tenant template.
    pub fn new<'a>(
        tenants: impl IntoIterator<
            Item = (
                &'a str,
                &'a BTreeMap<EventKind, TemplateConfig>,
                &'a BTreeMap<String, String>,
            ),
        >,
    ) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|n| {
            if n.ends_with("email_html") {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.add_filter("datetime", datetime_filter);
        for kind in KINDS {
            if let Some(src) = default_text(kind) {
                let n = name("_default", kind, None, "text");
                env.add_template_owned(n.clone(), src.to_string())
                    .map_err(|source| TemplateError::Invalid { name: n, source })?;
            }
        }
        let mut kinds = BTreeMap::new();
        let mut vars = BTreeMap::new();
        for (tenant, templates, tenant_vars) in tenants {
            vars.insert(tenant.to_string(), tenant_vars.clone());
            for (kind, t) in templates {
                let base = compile_variant(&mut env, tenant, *kind, None, &t.base())?;
                let mut locales = Vec::with_capacity(t.locales.len());
                for (locale, v) in &t.locales {
                    locales.push((
                        *locale,
                        compile_variant(&mut env, tenant, *kind, Some(*locale), v)?,
                    ));
                }
                kinds.insert(
                    (tenant.to_string(), *kind),
                    KindTemplates {
                        locale: t.locale,
                        base,
                        locales,
                    },
                );
            }
        }
        Ok(Templates {
            env,
            kinds,
            vars,
            places: BTreeMap::new(),
        })
    }

    /// The message body for this event on this channel, in the event's
    /// locale (`format.date_locale`, else the kind's configured `locale`,
    /// else ru-RU).
    pub fn render(&self, event: &Event, channel: Channel) -> Result<Body, TemplateError> {
        let own = self.kinds.get(&(event.tenant.clone(), event.kind));
        let format = match &event.format {
            Some(f) => f.clone(),
            None => {
                let (time_zone, time_zone_name) = self.zone(event);
                FormatOptions {
                    date_locale: own.and_then(|k| k.locale).unwrap_or(DateLocale::RuRu),
                    time_zone,
                    time_zone_name,
                    ..FormatOptions::default()
                }
            }
        };
        let locale = format.date_locale;
        let ctx = self.context(event, &format);
        // The most specific variant that has anything for this channel.
        let variant = own.and_then(|k| {
            k.locales
                .iter()
                .find(|(l, _)| *l == locale)
                .map(|(_, v)| v)
                .into_iter()
                .chain([&k.base])
                .find(|v| v.covers(channel))
        });

        if channel == Channel::Whatsapp
            && let Some(wa) = variant.and_then(|v| v.whatsapp.as_ref())
        {
            let params = wa
                .params
                .iter()
                .map(|p| self.render_one(p, &ctx))
                .collect::<Result<_, _>>()?;
            // A header or button value that renders empty would be refused
            // by Meta (132000-class): say which one here instead.
            let render = |_: &str, n: &str| {
                let v = self.render_one(n, &ctx)?;
                if v.is_empty() {
                    return Err(TemplateError::Empty {
                        name: n.to_string(),
                    });
                }
                Ok(v)
            };
            let header = wa
                .header
                .as_ref()
                .map(|h| map_header(h, render))
                .transpose()?;
            let buttons = wa
                .buttons
                .iter()
                .map(|b| map_button(b, render))
                .collect::<Result<_, _>>()?;
            return Ok(Body::Template {
                name: wa.name.clone(),
                language: wa.language.clone(),
                params,
                header,
                buttons,
                wazzup_template_id: wa.wazzup_template_id.clone(),
            });
        }

        let (text, text_name) = match variant.and_then(|v| v.text_for(channel)) {
            Some(n) => (self.render_one(n, &ctx)?, n.clone()),
            None => self.builtin(event, &format, &ctx)?,
        };
        if text.trim().is_empty() {
            return Err(TemplateError::Empty { name: text_name });
        }
        if channel != Channel::Email {
            return Ok(Body::Text(text));
        }
        let subject = match variant.and_then(|v| v.email_subject.as_ref()) {
            Some(n) => self.render_one(n, &ctx)?,
            None => default_subject(&text),
        };
        let html = match variant.and_then(|v| v.email_html.as_ref()) {
            Some(n) => self.render_one(n, &ctx)?,
            None => text_to_html(&text),
        };
        Ok(Body::Email {
            subject,
            html,
            text,
        })
    }

    /// The built-in text and the name errors carry.
    fn builtin(
        &self,
        e: &Event,
        format: &FormatOptions,
        ctx: &Value,
    ) -> Result<(String, String), TemplateError> {
        let n = name("_default", e.kind, None, "text");
        if booking::is_booking_kind(e.kind) {
            Ok((booking::render(e, format, self.vars_for(e)), n))
        } else {
            Ok((self.render_one(&n, ctx)?, n))
        }
    }

    fn render_one(&self, template: &str, ctx: &Value) -> Result<String, TemplateError> {
        let invalid = |source| TemplateError::Invalid {
            name: template.to_string(),
            source,
        };
        let t = self.env.get_template(template).map_err(invalid)?;
        let out = t.render(ctx).map_err(invalid)?;
        Ok(out.trim().to_string())
    }

    /// What templates see: the event's parameters flat, the tenant's vars
    /// (its branch's over them) flat (event values win) and under `vars`,
    /// the branch, seed 000's formatting resolved (locale, zone, names, hide
    /// flags) and the times formatted for the customer. docs/TEMPLATES.md
    /// lists every field.
    fn context(&self, e: &Event, f: &FormatOptions) -> Value {
        let mut m = Map::new();
        let vars = self.vars_for(e);
        if let Some(vars) = &vars {
            for (k, v) in vars.iter() {
                m.insert(k.clone(), json!(v));
            }
            m.insert("vars".into(), json!(vars));
        }
        if let Some(id) = &e.location {
            let name = match self.locate(e) {
                Located::Known(l) => l.name.clone(),
                _ => None,
            };
            m.insert("location_id".into(), json!(id));
            if let Some(name) = &name {
                m.insert("location_name".into(), json!(name));
            }
            m.insert("location".into(), json!({ "id": id, "name": name }));
        }
        let p = &e.params;
        let clock = Clock::new(f.date_locale, &f.time_zone, &f.time_zone_name);
        let fmt_time =
            |t: &chrono::DateTime<chrono::FixedOffset>| t.format("%d.%m.%Y %H:%M").to_string();
        let local = |t: &chrono::DateTime<chrono::FixedOffset>| clock.format(t, Style::Full);
        let iso = |t: &chrono::DateTime<chrono::FixedOffset>| t.to_rfc3339();
        let names = booking::names(e, f);
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.to_string(), v);
            }
        };
        put("tenant", json!(e.tenant));
        put("kind", json!(e.kind.as_str()));
        put("source", json!(e.source.as_str()));
        put("name", json!(e.recipient.name));
        put("order_number", json!(p.order_number));
        put("amount", json!(p.amount));
        put("currency", json!(p.currency));
        put("place", json!(p.place));
        put("previous_place", json!(p.previous_place));
        put("starts_at", json!(p.starts_at.as_ref().map(fmt_time)));
        put(
            "previous_starts_at",
            json!(p.previous_starts_at.as_ref().map(fmt_time)),
        );
        put(
            "occurred_at_local",
            json!(local(&e.occurred_at.fixed_offset())),
        );
        put("starts_at_local", json!(p.starts_at.as_ref().map(local)));
        put(
            "previous_starts_at_local",
            json!(p.previous_starts_at.as_ref().map(local)),
        );
        put("starts_at_iso", json!(p.starts_at.as_ref().map(iso)));
        put(
            "previous_starts_at_iso",
            json!(p.previous_starts_at.as_ref().map(iso)),
        );
        put("duration_minutes", json!(p.duration_minutes));
        put(
            "duration",
            json!(
                p.duration_minutes
                    .filter(|m| *m > 0)
                    .map(|m| datetime::duration(m, f.date_locale))
            ),
        );
        put("staff", json!(p.staff));
        if !p.services.is_empty() {
            put("services", json!(p.services));
        }
        put("description", json!(p.description));
        put("url", json!(p.url));
        put("extra", json!(p.extra));
        put("message", json!(f.message));
        put("locale", json!(datetime::locale_tag(f.date_locale)));
        put("time_zone", json!(f.time_zone));
        put("time_zone_name", json!(f.time_zone_name));
        put("case_type_name", json!(names.case_type));
        put("detail_section_name", json!(names.detail_section));
        put("resource_name", json!(names.resource));
        let hide: Map<String, Value> = HideFlag::ALL
            .iter()
            .map(|flag| {
                let key = flag.param().trim_start_matches("hide_").to_string();
                (key, json!(booking::hidden(f, *flag)))
            })
            .collect();
        put("hide", Value::Object(hide));
        if booking::is_booking_kind(e.kind) {
            put("formatted", json!(booking::render(e, f, vars)));
        }
        Value::Object(m)
    }
}

/// `{{ starts_at_iso|datetime }}`, `|datetime("date")`, `|datetime("time")`,
/// `|datetime("datetime")` (no zone name) or a strftime pattern
/// (`|datetime("%d.%m.%Y %H:%M")`), in the event's locale and time zone.
/// An empty or undefined value gives an empty string.
fn datetime_filter(
    state: &State,
    value: minijinja::Value,
    style: Option<String>,
) -> Result<String, minijinja::Error> {
    use minijinja::ErrorKind::InvalidOperation;
    let Some(raw) = value.as_str().map(str::trim).filter(|s| !s.is_empty()) else {
        if value.is_undefined() || value.is_none() || value.as_str().is_some() {
            return Ok(String::new());
        }
        return Err(minijinja::Error::new(
            InvalidOperation,
            format!("datetime expects an RFC 3339 string (e.g. starts_at_iso), got {value}"),
        ));
    };
    let t = chrono::DateTime::parse_from_rfc3339(raw).map_err(|e| {
        minijinja::Error::new(
            InvalidOperation,
            format!("datetime: {raw:?} is not RFC 3339 ({e}); use starts_at_iso"),
        )
    })?;
    let lookup = |k: &str| {
        state
            .lookup(k)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let locale = DateLocale::parse(&lookup("locale")).unwrap_or(DateLocale::RuRu);
    let clock = Clock::new(locale, &lookup("time_zone"), &lookup("time_zone_name"));
    let style = style.unwrap_or_else(|| "full".into());
    match Style::parse(&style) {
        Some(s) => Ok(clock.format(&t, s)),
        None if style.contains('%') => clock
            .strftime(&t, &style)
            .map_err(|e| minijinja::Error::new(InvalidOperation, e)),
        None => Err(minijinja::Error::new(
            InvalidOperation,
            format!("datetime style {style:?}: use full, datetime, date, time or a %-pattern"),
        )),
    }
}

/// The text's first line, cut at a word before 80 characters (with `…`).
fn default_subject(text: &str) -> String {
    const MAX: usize = 80;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.chars().count() <= MAX {
        return line.to_string();
    }
    let head: String = line.chars().take(MAX - 1).collect();
    let cut = match head.rfind(char::is_whitespace) {
        Some(i) if i > 0 => head[..i].trim_end(),
        _ => head.as_str(),
    };
    format!("{cut}…")
}

/// The plain text as HTML: paragraphs at blank lines, `<br>` at single breaks.
fn text_to_html(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let lines: Vec<String> = p
                .lines()
                .map(|l| minijinja::HtmlEscape(l).to_string())
                .collect();
            format!("<p>{}</p>", lines.join("<br>"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::{Params, Recipient, SCHEMA_VERSION};
    use shared::tenant::{WhatsappButton, WhatsappHeader, WhatsappTemplate};

    fn event(kind: EventKind) -> Event {
        Event {
            schema: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            tenant: "acme".into(),
            source: shared::SourceId::Iiko,
            kind,
            occurred_at: chrono::Utc::now(),
            received_at: chrono::Utc::now(),
            dedup_key: "acme:iiko:o:1:Delivered".into(),
            source_ref: None,
            location: None,
            recipient: Recipient {
                phone: shared::phone::normalise("+79161234567").ok(),
                email: None,
                name: Some("Иван".into()),
            },
            params: Params {
                order_number: Some("142".into()),
                ..Params::default()
            },
            format: None,
            route: None,
            lookup: None,
        }
    }

    #[test]
    fn every_kind_has_a_working_default() {
        let t = Templates::new([]).unwrap();
        for kind in KINDS {
            match t.render(&event(kind), Channel::Sms).unwrap() {
                Body::Text(s) => assert!(s.len() > 10, "{kind}: {s}"),
                b => panic!("{b:?}"),
            }
        }
        let Body::Text(s) = t
            .render(&event(EventKind::OrderCompleted), Channel::Sms)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(s, "Иван, спасибо за заказ №142! Будем рады вашему отзыву.");
    }

    #[test]
    fn tenant_text_vars_and_whatsapp_template() {
        let mut templates = BTreeMap::new();
        templates.insert(
            EventKind::OrderCompleted,
            TemplateConfig {
                text: Some("{{ brand }}: заказ {{ order_number }} доставлен".into()),
                whatsapp: Some(WhatsappTemplate {
                    name: "review_request".into(),
                    language: "ru".into(),
                    params: vec!["{{ name }}".into(), "{{ review_url }}".into()],
                    header: None,
                    buttons: vec![],
                    wazzup_template_id: None,
                }),
                ..TemplateConfig::default()
            },
        );
        let vars = BTreeMap::from([
            ("brand".to_string(), "Кофейня".to_string()),
            ("review_url".to_string(), "https://r.example/x".to_string()),
        ]);
        let t = Templates::new([("acme", &templates, &vars)]).unwrap();
        let e = event(EventKind::OrderCompleted);
        assert_eq!(
            t.render(&e, Channel::Sms).unwrap(),
            Body::Text("Кофейня: заказ 142 доставлен".into())
        );
        assert_eq!(
            t.render(&e, Channel::Whatsapp).unwrap(),
            Body::Template {
                name: "review_request".into(),
                language: "ru".into(),
                params: vec!["Иван".into(), "https://r.example/x".into()],
                header: None,
                buttons: vec![],
                wazzup_template_id: None,
            }
        );
    }

    #[test]
    fn template_buttons_are_checked_at_start_up_and_empty_values_when_sent() {
        let with = |header: Option<WhatsappHeader>, buttons: Vec<WhatsappButton>| {
            BTreeMap::from([(
                EventKind::OrderCompleted,
                TemplateConfig {
                    whatsapp: Some(WhatsappTemplate {
                        header,
                        buttons,
                        ..wa("review", "ru", &["{{ name }}"])
                    }),
                    ..TemplateConfig::default()
                },
            )])
        };
        let vars = BTreeMap::new();
        let url = |index, suffix: &str| WhatsappButton::Url {
            index,
            suffix: suffix.into(),
        };
        for buttons in [vec![url(0, "a"), url(0, "b")], vec![url(10, "a")]] {
            let cfg = with(None, buttons);
            let Err(err) = Templates::new([("acme", &cfg, &vars)]) else {
                panic!("a bad button index must be refused");
            };
            assert!(err.to_string().contains("button index"), "{err}");
        }
        // A link that renders empty (the branch has no photo): refused with
        // its name, not sent to Meta to be refused there.
        let cfg = with(
            Some(WhatsappHeader::Image {
                link: "{{ photo }}".into(),
            }),
            vec![url(0, "{{ review_path }}")],
        );
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let err = t
            .render(&event(EventKind::OrderCompleted), Channel::Whatsapp)
            .unwrap_err();
        assert!(err.to_string().contains("whatsapp.header.link"), "{err}");
    }

    #[test]
    fn a_broken_template_is_refused_at_start_up() {
        let templates = BTreeMap::from([(
            EventKind::DealWon,
            TemplateConfig {
                text: Some("{% if name %}unclosed".into()),
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::new();
        let err = Templates::new([("acme", &templates, &vars)])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("acme/deal_won/text"), "{err}");
    }

    // ---- per channel × locale selection -------------------------------------

    fn text_of(b: Body) -> String {
        match b {
            Body::Text(s) => s,
            Body::Email { text, .. } => text,
            b => panic!("expected text, got {b:?}"),
        }
    }

    fn with_locale(mut e: Event, locale: DateLocale) -> Event {
        e.format = Some(FormatOptions {
            date_locale: locale,
            ..FormatOptions::default()
        });
        e
    }

    fn wa(name: &str, language: &str, params: &[&str]) -> WhatsappTemplate {
        WhatsappTemplate {
            name: name.into(),
            language: language.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            header: None,
            buttons: vec![],
            wazzup_template_id: None,
        }
    }

    fn selection_config() -> BTreeMap<EventKind, TemplateConfig> {
        BTreeMap::from([(
            EventKind::OrderCompleted,
            TemplateConfig {
                text: Some("ru text {{ order_number }}".into()),
                sms: Some("ru sms {{ order_number }}".into()),
                whatsapp: Some(wa("review_ru", "ru", &["{{ name }}"])),
                email_subject: Some("ru subject".into()),
                email_text: Some("ru email text".into()),
                locale: Some(DateLocale::EnUs),
                locales: vec![(
                    DateLocale::EnUs,
                    TemplateVariant {
                        text: Some("en text {{ order_number }}".into()),
                        email_html: Some("<b>{{ name }}</b>".into()),
                        ..TemplateVariant::default()
                    },
                )],
                ..TemplateConfig::default()
            },
        )])
    }

    #[test]
    fn the_default_variant_serves_its_own_locale_per_channel() {
        let cfg = selection_config();
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let ru = with_locale(event(EventKind::OrderCompleted), DateLocale::RuRu);
        assert_eq!(
            t.render(&ru, Channel::Sms).unwrap(),
            Body::Text("ru sms 142".into())
        );
        assert_eq!(
            t.render(&ru, Channel::Whatsapp).unwrap(),
            Body::Template {
                name: "review_ru".into(),
                language: "ru".into(),
                params: vec!["Иван".into()],
                header: None,
                buttons: vec![],
                wazzup_template_id: None,
            }
        );
        assert_eq!(
            t.render(&ru, Channel::Email).unwrap(),
            Body::Email {
                subject: "ru subject".into(),
                html: "<p>ru email text</p>".into(),
                text: "ru email text".into(),
            }
        );
    }

    #[test]
    fn a_locale_variant_wins_over_the_default_variant_on_every_channel() {
        let cfg = selection_config();
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let en = with_locale(event(EventKind::OrderCompleted), DateLocale::EnUs);
        // The en-US variant has only `text` (and email_html): it serves SMS and
        // WhatsApp whole, rather than the Russian sms text or WhatsApp template.
        assert_eq!(
            t.render(&en, Channel::Sms).unwrap(),
            Body::Text("en text 142".into())
        );
        assert_eq!(
            t.render(&en, Channel::Whatsapp).unwrap(),
            Body::Text("en text 142".into())
        );
        assert_eq!(
            t.render(&en, Channel::Email).unwrap(),
            Body::Email {
                subject: "en text 142".into(),
                html: "<b>Иван</b>".into(),
                text: "en text 142".into(),
            }
        );
    }

    #[test]
    fn events_without_a_locale_use_the_kinds_configured_locale() {
        let mut cfg = selection_config();
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let plain = event(EventKind::OrderCompleted);
        assert!(plain.format.is_none());
        assert_eq!(
            text_of(t.render(&plain, Channel::Sms).unwrap()),
            "en text 142"
        );
        // Without a configured locale: ru-RU, the default variant.
        cfg.get_mut(&EventKind::OrderCompleted).unwrap().locale = None;
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        assert_eq!(
            text_of(t.render(&plain, Channel::Sms).unwrap()),
            "ru sms 142"
        );
    }

    #[test]
    fn a_locale_variant_with_its_own_whatsapp_template_and_channel_texts() {
        let cfg = BTreeMap::from([(
            EventKind::DealWon,
            TemplateConfig {
                text: Some("ru".into()),
                locales: vec![(
                    DateLocale::EnUs,
                    TemplateVariant {
                        sms: Some("en sms".into()),
                        whatsapp: Some(wa("review_en", "en_US", &["{{ locale }}"])),
                        ..TemplateVariant::default()
                    },
                )],
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let en = with_locale(event(EventKind::DealWon), DateLocale::EnUs);
        assert_eq!(
            t.render(&en, Channel::Whatsapp).unwrap(),
            Body::Template {
                name: "review_en".into(),
                language: "en_US".into(),
                params: vec!["en-US".into()],
                header: None,
                buttons: vec![],
                wazzup_template_id: None,
            }
        );
        assert_eq!(text_of(t.render(&en, Channel::Sms).unwrap()), "en sms");
        // The en-US variant has nothing for e-mail: the default variant serves it.
        assert_eq!(text_of(t.render(&en, Channel::Email).unwrap()), "ru");
        // Another tenant is not affected: built-in default.
        let mut other = en.clone();
        other.tenant = "other".into();
        assert!(text_of(t.render(&other, Channel::Sms).unwrap()).contains("спасибо за покупку"));
    }

    #[test]
    fn a_broken_template_in_any_variant_is_refused_with_its_name() {
        let broken = || Some("{% if x %}unclosed".to_string());
        let cases: Vec<(TemplateConfig, &str)> = vec![
            (
                TemplateConfig {
                    sms: broken(),
                    ..TemplateConfig::default()
                },
                "acme/deal_won/sms",
            ),
            (
                TemplateConfig {
                    whatsapp_text: broken(),
                    ..TemplateConfig::default()
                },
                "acme/deal_won/whatsapp_text",
            ),
            (
                TemplateConfig {
                    email_text: broken(),
                    ..TemplateConfig::default()
                },
                "acme/deal_won/email_text",
            ),
            (
                TemplateConfig {
                    email_html: broken(),
                    ..TemplateConfig::default()
                },
                "acme/deal_won/email_html",
            ),
            (
                TemplateConfig {
                    whatsapp: Some(wa("n", "ru", &["{{ name }}", "{{ name"])),
                    ..TemplateConfig::default()
                },
                "acme/deal_won/whatsapp.params[1]",
            ),
            (
                TemplateConfig {
                    text: Some("fine".into()),
                    locales: vec![(
                        DateLocale::EnUs,
                        TemplateVariant {
                            sms: broken(),
                            ..TemplateVariant::default()
                        },
                    )],
                    ..TemplateConfig::default()
                },
                "acme/deal_won/en-US/sms",
            ),
            (
                TemplateConfig {
                    locales: vec![(
                        DateLocale::RuRu,
                        TemplateVariant {
                            email_subject: broken(),
                            ..TemplateVariant::default()
                        },
                    )],
                    ..TemplateConfig::default()
                },
                "acme/deal_won/ru-RU/email_subject",
            ),
            (
                TemplateConfig {
                    locales: vec![(
                        DateLocale::EnUs,
                        TemplateVariant {
                            whatsapp: Some(wa("", "en", &[])),
                            ..TemplateVariant::default()
                        },
                    )],
                    ..TemplateConfig::default()
                },
                "acme/deal_won/en-US/whatsapp",
            ),
        ];
        let vars = BTreeMap::new();
        for (cfg, expected) in cases {
            let templates = BTreeMap::from([(EventKind::DealWon, cfg)]);
            let err = Templates::new([("acme", &templates, &vars)])
                .err()
                .unwrap_or_else(|| panic!("{expected} accepted"));
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
    }

    // ---- seed 000 booking formatting ---------------------------------------

    /// The booking source's documented example (docs/SOURCES.md) as an event.
    fn booking(kind: EventKind, format: FormatOptions) -> Event {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
        let mut e = event(kind);
        e.source = shared::SourceId::Booking;
        e.params = Params {
            order_number: Some("1001".into()),
            starts_at: Some(at("2026-12-01T10:00:00+03:00")),
            previous_starts_at: Some(at("2026-11-30T12:00:00+03:00")),
            place: Some("ул. Ленина, 1".into()),
            previous_place: Some("ул. Мира, 5".into()),
            duration_minutes: Some(90),
            services: vec!["Мастер Анна".into(), "Кресло 2".into()],
            staff: Some("Мастер Анна, Кресло 2".into()),
            description: Some("Мужская стрижка и укладка".into()),
            url: Some("https://torrow.net/case/c-1001".into()),
            amount: Some("1500.00".into()),
            currency: Some("RUB".into()),
            extra: BTreeMap::from([
                ("case_type".into(), "booking".into()),
                ("case_name".into(), "Стрижка".into()),
                ("service_name".into(), "Салон «Берёза»".into()),
                (
                    "service_url".into(),
                    "https://torrow.net/service/s-1".into(),
                ),
                ("resource_descriptions".into(), "Топ-стилист\n".into()),
                ("contact_info".into(), "+7 495 000-00-00".into()),
            ]),
        };
        e.format = Some(format);
        e
    }

    fn builtin(e: &Event) -> String {
        text_of(
            Templates::new([])
                .unwrap()
                .render(e, Channel::Whatsapp)
                .unwrap(),
        )
    }

    fn yekaterinburg_en() -> FormatOptions {
        FormatOptions {
            time_zone: "Asia/Yekaterinburg".into(),
            date_locale: DateLocale::EnUs,
            time_zone_name: "YEKT".into(),
            ..FormatOptions::default()
        }
    }

    #[test]
    fn acceptance_time_change_in_yekaterinburg_in_english() {
        let e = booking(EventKind::BookingTimeChanged, yekaterinburg_en());
        let s = builtin(&e);
        assert!(
            s.contains("New time: December 1, 2026, 12:00 PM (YEKT)"),
            "{s}"
        );
        assert!(s.starts_with("Time changed: booking #1001"), "{s}");
        assert!(!s.contains("Мск") && !s.contains("10:00"), "{s}");
        assert_eq!(
            s,
            "Time changed: booking #1001 “Стрижка”.\n\
             New time: December 1, 2026, 12:00 PM (YEKT)\n\
             Previous time: November 30, 2026, 2:00 PM (YEKT)\n\
             \n\
             Booking details:\n\
             Service: Салон «Берёза»\n\
             Services/resources:\n\
             • Мастер Анна — Топ-стилист\n\
             • Кресло 2\n\
             Duration: 1 h 30 min\n\
             Address: ул. Ленина, 1\n\
             Description: Мужская стрижка и укладка\n\
             Link: https://torrow.net/case/c-1001\n\
             Service link: https://torrow.net/service/s-1"
        );
    }

    #[test]
    fn acceptance_time_change_with_the_russian_defaults() {
        let e = booking(EventKind::BookingTimeChanged, FormatOptions::default());
        let s = builtin(&e);
        assert!(s.contains("1 декабря 2026"), "{s}");
        assert!(
            s.contains("Новое время: 1 декабря 2026, 10:00 (Мск)"),
            "{s}"
        );
        assert_eq!(
            s,
            "Изменено время: запись №1001 «Стрижка».\n\
             Новое время: 1 декабря 2026, 10:00 (Мск)\n\
             Прежнее время: 30 ноября 2026, 12:00 (Мск)\n\
             \n\
             Детали записи:\n\
             Услуга: Салон «Берёза»\n\
             Услуги/ресурсы:\n\
             • Мастер Анна — Топ-стилист\n\
             • Кресло 2\n\
             Длительность: 1 ч 30 мин\n\
             Адрес: ул. Ленина, 1\n\
             Описание: Мужская стрижка и укладка\n\
             Ссылка: https://torrow.net/case/c-1001\n\
             Ссылка на услугу: https://torrow.net/service/s-1"
        );
    }

    /// Each flag's part, and a text that only that part contains.
    const FLAG_PARTS: [(HideFlag, &str); 8] = [
        (HideFlag::DetailSection, "Детали записи"),
        (HideFlag::ResourceDescription, "Топ-стилист"),
        (HideFlag::OrderDuration, "Длительность: 1 ч 30 мин"),
        (HideFlag::Address, "Адрес: ул. Ленина, 1"),
        (HideFlag::ServiceName, "Услуга: Салон «Берёза»"),
        (HideFlag::OrderDescription, "Мужская стрижка и укладка"),
        (HideFlag::Url, "https://torrow.net/"),
        (HideFlag::ContactInfo, "+7 495 000-00-00"),
    ];

    /// Everything shown, then one flag on.
    fn flags(on: Option<HideFlag>) -> FormatOptions {
        let mut f = FormatOptions::default();
        for flag in HideFlag::ALL {
            f.hide.insert(flag, Some(flag) == on);
        }
        f
    }

    #[test]
    fn every_hide_flag_hides_only_its_part() {
        let all = builtin(&booking(EventKind::BookingCreated, flags(None)));
        for (_, part) in FLAG_PARTS {
            assert!(
                all.contains(part),
                "{part} missing with every flag off:\n{all}"
            );
        }
        for (flag, part) in FLAG_PARTS {
            let s = builtin(&booking(EventKind::BookingCreated, flags(Some(flag))));
            assert!(!s.contains(part), "{flag:?} on, {part} still shown:\n{s}");
            for (other, other_part) in FLAG_PARTS {
                let inside_section = other != HideFlag::ContactInfo;
                if other == flag || (flag == HideFlag::DetailSection && inside_section) {
                    continue;
                }
                assert!(s.contains(other_part), "{flag:?} on hid {other_part}:\n{s}");
            }
        }
    }

    #[test]
    fn hide_detail_section_removes_every_detail_line_and_hide_url_both_links() {
        let s = builtin(&booking(
            EventKind::BookingCreated,
            flags(Some(HideFlag::DetailSection)),
        ));
        assert_eq!(
            s,
            "Подтверждено: запись №1001 «Стрижка» на 1 декабря 2026, 10:00 (Мск).\n\
             \n\
             Контакты: +7 495 000-00-00"
        );
        let s = builtin(&booking(
            EventKind::BookingCreated,
            flags(Some(HideFlag::Url)),
        ));
        assert!(!s.contains("Ссылка"), "{s}");
    }

    #[test]
    fn contact_info_is_hidden_by_default() {
        assert!(FormatOptions::default().hide[&HideFlag::ContactInfo]);
        let s = builtin(&booking(
            EventKind::BookingCreated,
            FormatOptions::default(),
        ));
        assert!(
            !s.contains("+7 495 000-00-00") && !s.contains("Контакты"),
            "{s}"
        );
        // Shown when asked for; the tenant's var serves when the event has none.
        let mut shown = FormatOptions::default();
        shown.hide.insert(HideFlag::ContactInfo, false);
        let mut e = booking(EventKind::BookingCreated, shown);
        e.params.extra.remove("contact_info");
        let vars = BTreeMap::from([("contact_info".to_string(), "info@salon.example".to_string())]);
        let none = BTreeMap::new();
        let t = Templates::new([("acme", &none, &vars)]).unwrap();
        let s = text_of(t.render(&e, Channel::Sms).unwrap());
        assert!(s.ends_with("Контакты: info@salon.example"), "{s}");
    }

    #[test]
    fn resource_descriptions_pair_with_resources_only_when_aligned() {
        let mut e = booking(EventKind::BookingCreated, FormatOptions::default());
        // The booking source today skips resources without a description.
        e.params
            .extra
            .insert("resource_descriptions".into(), "Топ-стилист".into());
        let s = builtin(&e);
        assert!(
            s.contains("Услуги/ресурсы:\n• Мастер Анна\n• Кресло 2\nТоп-стилист"),
            "{s}"
        );
        e.params.extra.remove("resource_descriptions");
        let s = builtin(&e);
        assert!(s.contains("Услуги/ресурсы: Мастер Анна, Кресло 2\n"), "{s}");
    }

    #[test]
    fn names_default_by_case_type_and_the_urls_overrides_win() {
        let cases = [
            ("order", "заказ №1001", "Детали заказа:"),
            ("booking", "запись №1001", "Детали записи:"),
            (
                "event",
                "участие в мероприятии №1001",
                "Детали мероприятия:",
            ),
            ("", "запись №1001", "Детали записи:"),
        ];
        for (case_type, subject, section) in cases {
            let mut e = booking(EventKind::BookingCancelled, FormatOptions::default());
            e.params.extra.insert("case_type".into(), case_type.into());
            let s = builtin(&e);
            assert!(
                s.starts_with(&format!("Отменено: {subject}")),
                "{case_type}: {s}"
            );
            assert!(s.contains(section), "{case_type}: {s}");
            assert!(s.contains("Услуги/ресурсы:"), "{s}");
        }
        let en = builtin(&booking(EventKind::BookingCancelled, yekaterinburg_en()));
        assert!(
            en.contains("Booking details:") && en.contains("Services/resources:"),
            "{en}"
        );

        let f = FormatOptions {
            case_type_name: Some("визит".into()),
            detail_section_name: Some("Подробности".into()),
            resource_name: Some("Мастера".into()),
            ..FormatOptions::default()
        };
        let s = builtin(&booking(EventKind::BookingCancelled, f));
        assert!(s.starts_with("Отменено: визит №1001"), "{s}");
        assert!(s.contains("\nПодробности:\n"), "{s}");
        assert!(s.contains("\nМастера:\n• Мастер Анна"), "{s}");
        assert!(
            !s.contains("Детали записи") && !s.contains("Услуги/ресурсы"),
            "{s}"
        );
    }

    #[test]
    fn message_first_and_each_kinds_sentence() {
        let f = FormatOptions {
            message: Some("Вы записаны на услугу".into()),
            hide: HideFlag::ALL.iter().map(|f| (*f, true)).collect(),
            ..FormatOptions::default()
        };
        let cases = [
            (
                EventKind::BookingCreated,
                "Подтверждено: запись №1001 «Стрижка» на 1 декабря 2026, 10:00 (Мск).",
            ),
            (
                EventKind::BookingCancelled,
                "Отменено: запись №1001 «Стрижка» на 1 декабря 2026, 10:00 (Мск).",
            ),
            (
                EventKind::BookingCompleted,
                "Завершено: запись №1001 «Стрижка». Спасибо!",
            ),
            (
                EventKind::BookingPlaceChanged,
                "Изменено место: запись №1001 «Стрижка» на 1 декабря 2026, 10:00 (Мск).\n\
                 Новый адрес: ул. Ленина, 1\n\
                 Прежний адрес: ул. Мира, 5",
            ),
            (
                EventKind::PaymentReceived,
                "Получена оплата 1500.00 RUB: запись №1001 «Стрижка».",
            ),
        ];
        for (kind, sentence) in cases {
            let s = builtin(&booking(kind, f.clone()));
            assert_eq!(s, format!("Вы записаны на услугу\n{sentence}"), "{kind}");
        }
        let en = builtin(&booking(EventKind::PaymentReceived, yekaterinburg_en()));
        assert!(
            en.starts_with("Payment received 1500.00 RUB: booking #1001"),
            "{en}"
        );
    }

    #[test]
    fn booking_completed_asks_for_a_review_when_the_tenant_has_a_url() {
        let none = BTreeMap::new();
        let vars = BTreeMap::from([("review_url".to_string(), "https://r.example/x".to_string())]);
        let t = Templates::new([("acme", &none, &vars)]).unwrap();
        let e = booking(EventKind::BookingCompleted, FormatOptions::default());
        let s = text_of(t.render(&e, Channel::Sms).unwrap());
        assert!(
            s.contains("\nБудем рады вашему отзыву: https://r.example/x\n"),
            "{s}"
        );
    }

    #[test]
    fn booking_email_gets_a_first_line_subject_and_paragraph_html() {
        let mut e = booking(EventKind::BookingCreated, FormatOptions::default());
        e.params.description = Some("<b>кофе</b> & чай".into());
        let Body::Email {
            subject,
            html,
            text,
        } = Templates::new([])
            .unwrap()
            .render(&e, Channel::Email)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            subject,
            "Подтверждено: запись №1001 «Стрижка» на 1 декабря 2026, 10:00 (Мск)."
        );
        let long = format!("{} конец", "слово ".repeat(20));
        let subject = default_subject(&format!("\n{long}\nвторая строка"));
        assert!(
            subject.starts_with("слово слово") && subject.ends_with("слово…"),
            "{subject}"
        );
        assert!(subject.chars().count() <= 80, "{subject}");
        assert_eq!(default_subject("коротко\nещё"), "коротко");
        assert!(text.contains("<b>кофе</b> & чай"), "{text}");
        assert!(html.starts_with("<p>Подтверждено"), "{html}");
        assert!(
            html.contains("</p>\n<p>Детали записи:<br>Услуга:"),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;кофе&lt;&#x2f;b&gt; &amp; чай"),
            "{html}"
        );
    }

    // ---- context fields and the datetime filter ----------------------------

    #[test]
    fn tenant_templates_see_local_times_names_and_flags() {
        let cfg = BTreeMap::from([(
            EventKind::BookingTimeChanged,
            TemplateConfig {
                text: Some(
                    "{{ starts_at_local }} | {{ previous_starts_at_local }} | \
                     {{ starts_at_iso|datetime('date') }} | {{ starts_at_iso|datetime('time') }} | \
                     {{ starts_at_iso|datetime('%d.%m.%Y %H:%M') }} | {{ starts_at }} | \
                     {{ duration }} | {{ case_type_name }} | {{ detail_section_name }} | \
                     {{ resource_name }} | {{ locale }} | {{ time_zone }} | \
                     {{ 'url hidden' if hide.url }}/{{ 'address hidden' if hide.address }} | {{ missing|datetime }}."
                        .into(),
                ),
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let mut f = yekaterinburg_en();
        f.hide.insert(HideFlag::Url, true);
        let s = text_of(
            t.render(&booking(EventKind::BookingTimeChanged, f), Channel::Sms)
                .unwrap(),
        );
        assert_eq!(
            s,
            "December 1, 2026, 12:00 PM (YEKT) | November 30, 2026, 2:00 PM (YEKT) | \
             December 1, 2026 | 12:00 PM | 01.12.2026 12:00 | 01.12.2026 10:00 | \
             1 h 30 min | booking | Booking details | Services/resources | en-US | \
             Asia/Yekaterinburg | url hidden/ | ."
        );
        let ru = text_of(
            t.render(
                &booking(EventKind::BookingTimeChanged, FormatOptions::default()),
                Channel::Sms,
            )
            .unwrap(),
        );
        assert!(
            ru.starts_with("1 декабря 2026, 10:00 (Мск) | 30 ноября 2026, 12:00 (Мск) | 1 декабря 2026 | 10:00 |"),
            "{ru}"
        );
    }

    #[test]
    fn a_tenant_template_can_wrap_the_formatted_booking_message() {
        let cfg = BTreeMap::from([(
            EventKind::BookingCreated,
            TemplateConfig {
                text: Some("{{ brand }}\n{{ formatted }}".into()),
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::from([("brand".to_string(), "Берёза".to_string())]);
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let e = booking(EventKind::BookingCreated, FormatOptions::default());
        let s = text_of(t.render(&e, Channel::Sms).unwrap());
        assert_eq!(s, format!("Берёза\n{}", builtin(&e)));
    }

    #[test]
    fn the_datetime_filter_refuses_what_is_not_a_time() {
        let cfg = BTreeMap::from([(
            EventKind::BookingCreated,
            TemplateConfig {
                text: Some("{{ starts_at|datetime }}".into()),
                sms: Some("{{ starts_at_iso|datetime('weekday') }}".into()),
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::new();
        let t = Templates::new([("acme", &cfg, &vars)]).unwrap();
        let e = booking(EventKind::BookingCreated, FormatOptions::default());
        // `starts_at` is the legacy dd.mm.yyyy text, not RFC 3339.
        let err = t.render(&e, Channel::Whatsapp).unwrap_err();
        assert!(err.to_string().contains("starts_at_iso"), "{err}");
        let err = t.render(&e, Channel::Sms).unwrap_err();
        assert!(err.to_string().contains("weekday"), "{err}");
    }

    /// A chain with two branches in two zones: each event gets its own
    /// branch's name, review link and zone; a branch missing from the table
    /// gets the tenant's values and zone and is reported as unknown.
    #[test]
    fn each_branch_gets_its_own_name_link_and_zone() {
        let cfg = BTreeMap::from([(
            EventKind::OrderCompleted,
            TemplateConfig {
                text: Some(
                    "{{ brand }}{% if location_name %}, {{ location_name }}{% endif %}: {{ review_url }} ({{ time_zone }}, {{ occurred_at_local }})"
                        .into(),
                ),
                ..TemplateConfig::default()
            },
        )]);
        let vars = BTreeMap::from([
            ("brand".to_string(), "Берёза".to_string()),
            (
                "review_url".to_string(),
                "https://r.example/chain".to_string(),
            ),
        ]);
        let branch = |name: &str, zone: Option<&str>, url: &str| LocationConfig {
            name: Some(name.into()),
            time_zone: zone.map(String::from),
            time_zone_name: None,
            vars: BTreeMap::from([("review_url".to_string(), url.to_string())]),
            ..LocationConfig::default()
        };
        let places = Places {
            time_zone: Some("Europe/Kaliningrad".into()),
            time_zone_name: Some("Клд".into()),
            locations: BTreeMap::from([
                (
                    "org-msk".to_string(),
                    branch(
                        "Тверская",
                        Some("Europe/Moscow"),
                        "https://yandex.ru/maps/org/1",
                    ),
                ),
                (
                    "org-vvo".to_string(),
                    branch(
                        "Светланская",
                        Some("Asia/Vladivostok"),
                        "https://2gis.ru/vvo/firm/2",
                    ),
                ),
                (
                    "org-kgd".to_string(),
                    branch("Ленинский", None, "https://g.page/3"),
                ),
            ]),
        };
        let t = Templates::new([("acme", &cfg, &vars)])
            .unwrap()
            .with_places([("acme", places)]);
        let at = |location: Option<&str>| {
            let mut e = event(EventKind::OrderCompleted);
            e.occurred_at = "2026-12-03T09:30:00Z".parse().unwrap();
            e.location = location.map(String::from);
            e
        };
        let text = |e: &Event| text_of(t.render(e, Channel::Sms).unwrap());

        let msk = at(Some("org-msk"));
        assert!(
            matches!(t.locate(&msk), Located::Known(l) if l.name.as_deref() == Some("Тверская"))
        );
        assert_eq!(
            text(&msk),
            "Берёза, Тверская: https://yandex.ru/maps/org/1 (Europe/Moscow, 3 декабря 2026, 12:30 (Мск))"
        );
        assert_eq!(
            text(&at(Some("org-vvo"))),
            "Берёза, Светланская: https://2gis.ru/vvo/firm/2 (Asia/Vladivostok, 3 декабря 2026, 19:30)"
        );
        // A branch without its own zone is in the tenant's, with its label.
        assert_eq!(
            text(&at(Some("org-kgd"))),
            "Берёза, Ленинский: https://g.page/3 (Europe/Kaliningrad, 3 декабря 2026, 11:30 (Клд))"
        );
        // Unknown branch: the tenant's link and zone, no branch name.
        let unknown = at(Some("org-new"));
        assert_eq!(t.locate(&unknown), Located::Unknown);
        assert_eq!(
            text(&unknown),
            "Берёза: https://r.example/chain (Europe/Kaliningrad, 3 декабря 2026, 11:30 (Клд))"
        );
        // No location on the event: the tenant's, and nothing to report.
        assert_eq!(t.locate(&at(None)), Located::Unplaced);
        // A tenant without a table: Moscow, nothing to report either.
        let plain = Templates::new([("acme", &cfg, &vars)]).unwrap();
        assert_eq!(plain.locate(&msk), Located::Unplaced);
        assert!(
            text_of(plain.render(&msk, Channel::Sms).unwrap())
                .contains("https://r.example/chain (Europe/Moscow")
        );
    }
}
