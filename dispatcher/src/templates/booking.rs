//! The built-in message of the booking kinds (seed 000): the URL's `message`
//! first, the kind's sentence with the case type and the time in the
//! customer's zone and locale, then the details section, each part hidden by
//! its `hide_*` flag. Used when the tenant has no template of its own.

use std::collections::BTreeMap;

use shared::event::{DateLocale, Event, EventKind, FormatOptions, HideFlag};

use super::datetime::{Clock, Style, duration};

/// Seed 000's case types (`case.type`, in `extra.case_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseType {
    Order,
    Booking,
    Event,
}

impl CaseType {
    /// Unknown or missing types read as a booking: every kind here is a booking kind.
    fn of(e: &Event) -> CaseType {
        match e.params.extra.get("case_type").map(|s| s.trim()) {
            Some("order") => CaseType::Order,
            Some("event") => CaseType::Event,
            _ => CaseType::Booking,
        }
    }

    fn name(self, l: DateLocale) -> &'static str {
        match (self, l) {
            (CaseType::Order, DateLocale::RuRu) => "заказ",
            (CaseType::Booking, DateLocale::RuRu) => "запись",
            (CaseType::Event, DateLocale::RuRu) => "участие в мероприятии",
            (CaseType::Order, DateLocale::EnUs) => "order",
            (CaseType::Booking, DateLocale::EnUs) => "booking",
            (CaseType::Event, DateLocale::EnUs) => "event participation",
        }
    }

    fn section(self, l: DateLocale) -> &'static str {
        match (self, l) {
            (CaseType::Order, DateLocale::RuRu) => "Детали заказа",
            (CaseType::Booking, DateLocale::RuRu) => "Детали записи",
            (CaseType::Event, DateLocale::RuRu) => "Детали мероприятия",
            (CaseType::Order, DateLocale::EnUs) => "Order details",
            (CaseType::Booking, DateLocale::EnUs) => "Booking details",
            (CaseType::Event, DateLocale::EnUs) => "Event details",
        }
    }
}

/// The names the message uses: the URL's, else seed 000's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Names {
    pub case_type: String,
    pub detail_section: String,
    pub resource: String,
}

pub fn names(e: &Event, f: &FormatOptions) -> Names {
    let ct = CaseType::of(e);
    let l = f.date_locale;
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Names {
        case_type: given(&f.case_type_name).unwrap_or_else(|| ct.name(l).to_string()),
        detail_section: given(&f.detail_section_name).unwrap_or_else(|| ct.section(l).to_string()),
        resource: given(&f.resource_name).unwrap_or_else(|| {
            match l {
                DateLocale::RuRu => "Услуги/ресурсы",
                DateLocale::EnUs => "Services/resources",
            }
            .to_string()
        }),
    }
}

pub fn is_booking_kind(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::BookingCreated
            | EventKind::BookingCancelled
            | EventKind::BookingCompleted
            | EventKind::BookingTimeChanged
            | EventKind::BookingPlaceChanged
            | EventKind::PaymentReceived
    )
}

pub fn hidden(f: &FormatOptions, flag: HideFlag) -> bool {
    f.hide.get(&flag).copied().unwrap_or(flag.default_value())
}

/// Fixed wording per locale.
struct Words {
    number: &'static str,
    quote: (&'static str, &'static str),
    at: &'static str,
    confirmed: &'static str,
    cancelled: &'static str,
    completed: &'static str,
    thanks: &'static str,
    review: &'static str,
    time_changed: &'static str,
    new_time: &'static str,
    previous_time: &'static str,
    place_changed: &'static str,
    new_address: &'static str,
    previous_address: &'static str,
    payment: &'static str,
    service: &'static str,
    duration: &'static str,
    address: &'static str,
    description: &'static str,
    link: &'static str,
    service_link: &'static str,
    contacts: &'static str,
}

const RU: Words = Words {
    number: "№",
    quote: ("«", "»"),
    at: "на",
    confirmed: "Подтверждено",
    cancelled: "Отменено",
    completed: "Завершено",
    thanks: "Спасибо!",
    review: "Будем рады вашему отзыву",
    time_changed: "Изменено время",
    new_time: "Новое время",
    previous_time: "Прежнее время",
    place_changed: "Изменено место",
    new_address: "Новый адрес",
    previous_address: "Прежний адрес",
    payment: "Получена оплата",
    service: "Услуга",
    duration: "Длительность",
    address: "Адрес",
    description: "Описание",
    link: "Ссылка",
    service_link: "Ссылка на услугу",
    contacts: "Контакты",
};

const EN: Words = Words {
    number: "#",
    quote: ("“", "”"),
    at: "for",
    confirmed: "Confirmed",
    cancelled: "Cancelled",
    completed: "Completed",
    thanks: "Thank you!",
    review: "We would appreciate your review",
    time_changed: "Time changed",
    new_time: "New time",
    previous_time: "Previous time",
    place_changed: "Place changed",
    new_address: "New address",
    previous_address: "Previous address",
    payment: "Payment received",
    service: "Service",
    duration: "Duration",
    address: "Address",
    description: "Description",
    link: "Link",
    service_link: "Service link",
    contacts: "Contacts",
};

fn non_empty(s: Option<&String>) -> Option<&str> {
    s.map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// The whole message. `vars` are the tenant's (`review_url`, `contact_info`).
pub fn render(e: &Event, f: &FormatOptions, vars: Option<&BTreeMap<String, String>>) -> String {
    let l = f.date_locale;
    let w = match l {
        DateLocale::RuRu => &RU,
        DateLocale::EnUs => &EN,
    };
    let clock = Clock::new(l, &f.time_zone, &f.time_zone_name);
    let names = names(e, f);
    let p = &e.params;
    let var = |k: &str| vars.and_then(|v| non_empty(v.get(k)));

    // "запись №1001 «Стрижка»"
    let mut subject = names.case_type.clone();
    if let Some(n) = non_empty(p.order_number.as_ref()) {
        subject.push_str(&format!(" {}{n}", w.number));
    }
    if let Some(n) = non_empty(p.extra.get("case_name")) {
        subject.push_str(&format!(" {}{n}{}", w.quote.0, w.quote.1));
    }
    let when = p.starts_at.as_ref().map(|t| clock.format(t, Style::Full));
    let at_when = when
        .as_ref()
        .map(|t| format!(" {} {t}", w.at))
        .unwrap_or_default();

    let mut head: Vec<String> = Vec::new();
    if let Some(m) = non_empty(f.message.as_ref()) {
        head.push(m.to_string());
    }
    match e.kind {
        EventKind::BookingCreated => head.push(format!("{}: {subject}{at_when}.", w.confirmed)),
        EventKind::BookingCancelled => head.push(format!("{}: {subject}{at_when}.", w.cancelled)),
        EventKind::BookingTimeChanged => {
            head.push(format!("{}: {subject}.", w.time_changed));
            if let Some(t) = &when {
                head.push(format!("{}: {t}", w.new_time));
            }
            if let Some(t) = &p.previous_starts_at {
                head.push(format!(
                    "{}: {}",
                    w.previous_time,
                    clock.format(t, Style::Full)
                ));
            }
        }
        EventKind::BookingPlaceChanged => {
            head.push(format!("{}: {subject}{at_when}.", w.place_changed));
            // The new place is the news itself, so it is shown even with hide_address.
            if let Some(a) = non_empty(p.place.as_ref()) {
                head.push(format!("{}: {a}", w.new_address));
            }
            if let Some(a) = non_empty(p.previous_place.as_ref()) {
                head.push(format!("{}: {a}", w.previous_address));
            }
        }
        EventKind::PaymentReceived => {
            let amount =
                non_empty(p.amount.as_ref()).map(|a| match non_empty(p.currency.as_ref()) {
                    Some(c) => format!("{a} {c}"),
                    None => a.to_string(),
                });
            head.push(match amount {
                Some(a) => format!("{} {a}: {subject}.", w.payment),
                None => format!("{}: {subject}.", w.payment),
            });
        }
        // BookingCompleted, and any other kind routed here.
        _ => {
            head.push(format!("{}: {subject}. {}", w.completed, w.thanks));
            if let Some(url) = var("review_url") {
                head.push(format!("{}: {url}", w.review));
            }
        }
    }

    let mut sections = vec![head.join("\n")];
    if !hidden(f, HideFlag::DetailSection) {
        let details = details(e, f, w, &names, l);
        if !details.is_empty() {
            sections.push(format!("{}:\n{}", names.detail_section, details.join("\n")));
        }
    }
    if !hidden(f, HideFlag::ContactInfo)
        && let Some(c) = non_empty(p.extra.get("contact_info")).or_else(|| var("contact_info"))
    {
        sections.push(format!("{}: {c}", w.contacts));
    }
    sections.join("\n\n")
}

fn details(e: &Event, f: &FormatOptions, w: &Words, names: &Names, l: DateLocale) -> Vec<String> {
    let p = &e.params;
    let show = |flag| !hidden(f, flag);
    let mut lines = Vec::new();
    if show(HideFlag::ServiceName)
        && let Some(s) = non_empty(p.extra.get("service_name"))
    {
        lines.push(format!("{}: {s}", w.service));
    }
    lines.extend(resources(e, f, names));
    if show(HideFlag::OrderDuration)
        && let Some(m) = p.duration_minutes.filter(|m| *m > 0)
    {
        lines.push(format!("{}: {}", w.duration, duration(m, l)));
    }
    // A place change names the new address in its sentence already.
    if show(HideFlag::Address)
        && e.kind != EventKind::BookingPlaceChanged
        && let Some(a) = non_empty(p.place.as_ref())
    {
        lines.push(format!("{}: {a}", w.address));
    }
    if show(HideFlag::OrderDescription)
        && let Some(d) = non_empty(p.description.as_ref())
    {
        lines.push(format!("{}: {d}", w.description));
    }
    if show(HideFlag::Url) {
        if let Some(u) = non_empty(p.url.as_ref()) {
            lines.push(format!("{}: {u}", w.link));
        }
        if let Some(u) = non_empty(p.extra.get("service_url")) {
            lines.push(format!("{}: {u}", w.service_link));
        }
    }
    lines
}

/// `Услуги/ресурсы: Мастер Анна, Кресло 2`, or one line per resource with
/// its description. The booking source gives the names in `services` and
/// the descriptions in `extra.resource_descriptions`, one per line; they are
/// paired when there is one line per resource, else the descriptions follow
/// the names.
fn resources(e: &Event, f: &FormatOptions, names: &Names) -> Vec<String> {
    let p = &e.params;
    let list: Vec<&str> = p
        .services
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let descriptions: Vec<&str> = if hidden(f, HideFlag::ResourceDescription) {
        Vec::new()
    } else {
        p.extra
            .get("resource_descriptions")
            .map(|d| d.split('\n').map(str::trim).collect())
            .unwrap_or_default()
    };
    let any_description = descriptions.iter().any(|d| !d.is_empty());
    if list.is_empty() && !any_description {
        return Vec::new();
    }
    if !any_description {
        return vec![format!("{}: {}", names.resource, list.join(", "))];
    }
    let mut lines = vec![format!("{}:", names.resource)];
    if descriptions.len() == list.len() {
        for (name, d) in list.iter().zip(&descriptions) {
            lines.push(if d.is_empty() {
                format!("• {name}")
            } else {
                format!("• {name} — {d}")
            });
        }
    } else {
        lines.extend(list.iter().map(|n| format!("• {n}")));
        lines.extend(
            descriptions
                .iter()
                .filter(|d| !d.is_empty())
                .map(|d| d.to_string()),
        );
    }
    lines
}
