//! Message texts per tenant and event kind (minijinja), with a built-in
//! review-request default per kind so a new tenant works at once. Every
//! template is compiled at start-up: a broken template stops the dispatcher
//! with a clear error instead of failing at send time.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value, json};
use shared::event::{Event, EventKind};
use shared::tenant::{Channel, TemplateConfig};

use crate::providers::Body;

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

/// The built-in texts (Russian; a tenant overrides any of them).
fn default_text(kind: EventKind) -> &'static str {
    match kind {
        EventKind::OrderCompleted => {
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за заказ{% if order_number %} №{{ order_number }}{% endif %}{% if brand %} в «{{ brand }}»{% endif %}! Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}"
        }
        EventKind::VisitCompleted => {
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за визит{% if brand %} в «{{ brand }}»{% endif %}{% if staff %}! Мастер: {{ staff }}{% endif %}. Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}"
        }
        EventKind::DealWon => {
            "{% if name %}{{ name }}, с{% else %}С{% endif %}пасибо за покупку{% if brand %} в «{{ brand }}»{% endif %}! Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}"
        }
        EventKind::BookingCreated => {
            "{% if message %}{{ message }}. {% endif %}Вы записаны{% if services %}: {{ services|join(', ') }}{% endif %}{% if starts_at %}, {{ starts_at }}{% endif %}{% if place %}, {{ place }}{% endif %}."
        }
        EventKind::BookingCancelled => {
            "{% if message %}{{ message }}. {% endif %}Ваша запись{% if order_number %} №{{ order_number }}{% endif %}{% if starts_at %} на {{ starts_at }}{% endif %} отменена."
        }
        EventKind::BookingCompleted => {
            "{% if message %}{{ message }}. {% endif %}Спасибо за визит! Будем рады вашему отзыву{% if review_url %}: {{ review_url }}{% else %}.{% endif %}"
        }
        EventKind::BookingTimeChanged => {
            "{% if message %}{{ message }}. {% endif %}Время вашей записи{% if order_number %} №{{ order_number }}{% endif %} изменено{% if starts_at %}: {{ starts_at }}{% endif %}."
        }
        EventKind::BookingPlaceChanged => {
            "{% if message %}{{ message }}. {% endif %}Место вашей записи{% if order_number %} №{{ order_number }}{% endif %} изменено{% if place %}: {{ place }}{% endif %}."
        }
        EventKind::PaymentReceived => {
            "{% if message %}{{ message }}. {% endif %}Оплата{% if amount %} {{ amount }}{% if currency %} {{ currency }}{% endif %}{% endif %} получена. Спасибо!"
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name}: {source}")]
    Invalid {
        name: String,
        source: minijinja::Error,
    },
    #[error("template {name} rendered an empty message")]
    Empty { name: String },
}

pub struct Templates {
    env: Environment<'static>,
    /// (tenant, kind) → the tenant's own template config.
    whatsapp: BTreeMap<(String, EventKind), (String, String, usize)>,
    vars: BTreeMap<String, BTreeMap<String, String>>,
}

fn name(tenant: &str, kind: EventKind, part: &str) -> String {
    format!("{tenant}/{kind}/{part}")
}

impl Templates {
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
        let add = |env: &mut Environment<'static>, n: String, src: String| {
            env.add_template_owned(n.clone(), src)
                .map_err(|source| TemplateError::Invalid { name: n, source })
        };
        for kind in KINDS {
            add(
                &mut env,
                name("_default", kind, "text"),
                default_text(kind).to_string(),
            )?;
        }
        let mut whatsapp = BTreeMap::new();
        let mut vars = BTreeMap::new();
        for (tenant, templates, tenant_vars) in tenants {
            vars.insert(tenant.to_string(), tenant_vars.clone());
            for (kind, t) in templates {
                if let Some(text) = &t.text {
                    add(&mut env, name(tenant, *kind, "text"), text.clone())?;
                }
                if let Some(s) = &t.email_subject {
                    add(&mut env, name(tenant, *kind, "email_subject"), s.clone())?;
                }
                if let Some(h) = &t.email_html {
                    add(&mut env, name(tenant, *kind, "email_html"), h.clone())?;
                }
                if let Some(wa) = &t.whatsapp {
                    for (i, p) in wa.params.iter().enumerate() {
                        add(&mut env, name(tenant, *kind, &format!("wa{i}")), p.clone())?;
                    }
                    whatsapp.insert(
                        (tenant.to_string(), *kind),
                        (wa.name.clone(), wa.language.clone(), wa.params.len()),
                    );
                }
            }
        }
        Ok(Templates {
            env,
            whatsapp,
            vars,
        })
    }

    /// The message body for this event on this channel.
    pub fn render(&self, event: &Event, channel: Channel) -> Result<Body, TemplateError> {
        let ctx = self.context(event);
        let tenant = event.tenant.as_str();
        if channel == Channel::Whatsapp
            && let Some((tpl, language, n)) = self.whatsapp.get(&(tenant.to_string(), event.kind))
        {
            let mut params = Vec::with_capacity(*n);
            for i in 0..*n {
                params.push(self.render_one(&name(tenant, event.kind, &format!("wa{i}")), &ctx)?);
            }
            return Ok(Body::Template {
                name: tpl.clone(),
                language: language.clone(),
                params,
            });
        }
        let text_name = self.pick(tenant, event.kind, "text");
        let text = self.render_one(&text_name, &ctx)?;
        if text.trim().is_empty() {
            return Err(TemplateError::Empty { name: text_name });
        }
        if channel == Channel::Email {
            let subject_name = name(tenant, event.kind, "email_subject");
            let subject = if self.env.get_template(&subject_name).is_ok() {
                self.render_one(&subject_name, &ctx)?
            } else {
                text.chars().take(60).collect()
            };
            let html_name = name(tenant, event.kind, "email_html");
            let html = if self.env.get_template(&html_name).is_ok() {
                self.render_one(&html_name, &ctx)?
            } else {
                format!("<p>{}</p>", minijinja::HtmlEscape(&text))
            };
            return Ok(Body::Email {
                subject,
                html,
                text,
            });
        }
        Ok(Body::Text(text))
    }

    fn pick(&self, tenant: &str, kind: EventKind, part: &str) -> String {
        let own = name(tenant, kind, part);
        if self.env.get_template(&own).is_ok() {
            own
        } else {
            name("_default", kind, part)
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
    /// flat (event values win) and under `vars`, and the URL's formatting.
    fn context(&self, e: &Event) -> Value {
        let mut m = Map::new();
        if let Some(vars) = self.vars.get(&e.tenant) {
            for (k, v) in vars {
                m.insert(k.clone(), json!(v));
            }
            m.insert("vars".into(), json!(vars));
        }
        let p = &e.params;
        let fmt_time =
            |t: &chrono::DateTime<chrono::FixedOffset>| t.format("%d.%m.%Y %H:%M").to_string();
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
        put("duration_minutes", json!(p.duration_minutes));
        put("staff", json!(p.staff));
        if !p.services.is_empty() {
            put("services", json!(p.services));
        }
        put("description", json!(p.description));
        put("url", json!(p.url));
        put("extra", json!(p.extra));
        if let Some(f) = &e.format {
            put("message", json!(f.message));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::{Params, Recipient, SCHEMA_VERSION};
    use shared::tenant::WhatsappTemplate;

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
            }
        );
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
}
