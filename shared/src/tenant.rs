//! Tenants (a restaurant chain, a salon network) and their webhook keys.
//!
//! A key is looked up by its SHA-256 (so the map lookup's timing says nothing
//! about the key) and then compared in constant time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::event::{DateLocale, EventKind};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Short stable id: letters, digits, '-', '_'. Appears in dedup keys and logs.
    pub id: String,
    /// Webhook keys (several, so a key can be rotated without downtime).
    pub keys: Vec<String>,
    #[serde(default)]
    pub sources: SourceSettings,
    /// Channels in order of preference, per event kind (`default` for the
    /// rest): the first with a configured provider is used.
    #[serde(default)]
    pub channels: ChannelPolicy,
    /// Values every template of this tenant can use (`brand`, `review_url`, ...).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Templates per event kind; kinds without one use the built-in defaults.
    #[serde(default)]
    pub templates: BTreeMap<EventKind, TemplateConfig>,
    /// Provider accounts by provider name (`meta`, `smsru`, ...). Each provider
    /// module owns and validates the shape of its own section.
    #[serde(default)]
    pub providers: BTreeMap<String, serde_json::Value>,
    /// Forces a provider for a channel (`whatsapp = "meta"`), as seed 001's
    /// `sendWhatsapp(phone, text, "meta")`; without it the first configured
    /// provider of the channel is used.
    #[serde(default)]
    pub provider_for: BTreeMap<Channel, String>,
    /// CRM accounts used to look a phone up when a hook carries none
    /// (`amocrm`, `yclients`); the dispatcher owns their shape.
    #[serde(default)]
    pub lookup: BTreeMap<String, serde_json::Value>,
    /// The tenant's time zone (IANA, e.g. `Asia/Yekaterinburg`) for events
    /// that carry none and come from no configured location; Moscow when
    /// not set.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// How times are labelled in that zone ("Екб"); "Мск" for Moscow,
    /// nothing for other zones when not set.
    #[serde(default)]
    pub time_zone_name: Option<String>,
    /// The chain's branches, keyed by the id events carry in `location`
    /// (iiko `organizationId`, R-Keeper `objectId`, YCLIENTS `company_id`,
    /// AmoCRM account): each its own name, time zone and template values.
    #[serde(default)]
    pub locations: BTreeMap<String, LocationConfig>,
    /// At most so many messages of a kind to one recipient in a window,
    /// across every branch (`[tenants.frequency_caps.order_completed]`).
    #[serde(default)]
    pub frequency_caps: BTreeMap<EventKind, FrequencyCap>,
    /// When to send, per event kind: a delay after the event or a reminder
    /// before a booking's start (`[tenants.delays]`).
    #[serde(default)]
    pub delays: BTreeMap<EventKind, Delay>,
    /// The hours messages may go out, in the event's time zone: `default`
    /// and per event kind (`[tenants.send_hours]`); outside them is quiet.
    #[serde(default)]
    pub send_hours: BTreeMap<String, SendHours>,
    /// How long a message may wait for a paused provider account before it
    /// goes to the DLQ as `expired_while_paused` (default 24 h).
    #[serde(default)]
    pub hold_max_secs: Option<u64>,
}

/// `[tenants.delays.<kind>]`: exactly one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Send this long after the event happened (`occurred_at`).
    #[serde(default)]
    pub after_secs: Option<u64>,
    /// Send this long before the booking starts (a reminder); a booking
    /// already started when the moment comes is not reminded of (`expired`).
    #[serde(default)]
    pub before_start_secs: Option<u64>,
}

/// The event kind of this name (`order_completed`), if any.
pub fn kind_named(name: &str) -> Option<EventKind> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// Event kinds that carry a start time (`params.starts_at`).
pub const KINDS_WITH_START: [EventKind; 3] = [
    EventKind::BookingCreated,
    EventKind::BookingTimeChanged,
    EventKind::BookingPlaceChanged,
];

impl Delay {
    fn validate(&self, kind: EventKind) -> Result<(), String> {
        match (self.after_secs, self.before_start_secs) {
            (Some(_), None) => Ok(()),
            (None, Some(_)) if KINDS_WITH_START.contains(&kind) => Ok(()),
            (None, Some(_)) => Err(format!(
                "before_start_secs needs a kind with a start time ({})",
                KINDS_WITH_START.map(|k| k.as_str()).join(", ")
            )),
            _ => Err("set exactly one of after_secs and before_start_secs".into()),
        }
    }
}

/// A daily window, `"10:00-21:00"` (seconds allowed: `"09:30:00-21:00:00"`;
/// `24:00` is the end of the day; `"22:00-06:00"` runs over midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendHours {
    /// Seconds after local midnight, `from` included, `to` excluded.
    pub from: u32,
    pub to: u32,
}

impl SendHours {
    pub const DAY: u32 = 24 * 3600;

    pub fn parse(s: &str) -> Result<SendHours, String> {
        let bad = || format!("send hours {s:?}: write them as \"10:00-21:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let at = |t: &str| -> Result<u32, String> {
            let parts: Vec<&str> = t.trim().split(':').collect();
            if !(2..=3).contains(&parts.len()) {
                return Err(bad());
            }
            let n: Vec<u32> = parts
                .iter()
                .map(|p| p.parse::<u32>().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            let (h, m, sec) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
            if m >= 60 || sec >= 60 || h > 24 || (h == 24 && (m, sec) != (0, 0)) {
                return Err(bad());
            }
            Ok(h * 3600 + m * 60 + sec)
        };
        let (from, to) = (at(a)?, at(b)?);
        if from == to || from >= Self::DAY {
            return Err(format!(
                "send hours {s:?}: an empty window (to send at any hour, leave them out)"
            ));
        }
        Ok(SendHours { from, to })
    }

    /// Whether a local time of day (seconds after midnight) is inside.
    pub fn contains(&self, second_of_day: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&second_of_day)
        } else {
            second_of_day >= self.from || second_of_day < self.to
        }
    }
}

impl<'de> Deserialize<'de> for SendHours {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SendHours::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[tenants.frequency_caps.<kind>]`: at most `at_most` messages of that
/// kind to one recipient within `window_secs` (a capped event is journaled
/// `skipped: frequency cap`, not sent, not dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    #[serde(default = "one")]
    pub at_most: u32,
    pub window_secs: u64,
}

fn one() -> u32 {
    1
}

impl FrequencyCap {
    pub fn validate(&self) -> Result<(), String> {
        if self.at_most == 0 {
            return Err(
                "at_most must be at least 1 (to send nothing, leave the kind out of the channels)"
                    .into(),
            );
        }
        if self.window_secs == 0 {
            return Err("window_secs must be at least 1".into());
        }
        Ok(())
    }

    pub fn window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.window_secs)
    }
}

/// One branch of a tenant: `[tenants.locations."<id>"]`.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    /// What customers call it ("Кофейня на Тверской"): `location_name` in
    /// templates.
    #[serde(default)]
    pub name: Option<String>,
    /// IANA zone of the branch; the tenant's when not set.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Label shown after times; as for the tenant when not set.
    #[serde(default)]
    pub time_zone_name: Option<String>,
    /// Template values over the tenant's `vars` (above all the branch's own
    /// `review_url` on Yandex Maps, 2GIS or Google).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The branch's channels, instead of the tenant's `[tenants.channels]`.
    #[serde(default)]
    pub channels: Option<ChannelPolicy>,
    /// Provider sections over the tenant's, key by key: another sender
    /// name (`smsru = { sender = "Lenina5" }`), another account (its own
    /// `phone_number_id` and token), or a provider the tenant lacks.
    #[serde(default)]
    pub providers: BTreeMap<String, serde_json::Value>,
    /// Forced providers per channel, over the tenant's `provider_for`.
    #[serde(default)]
    pub provider_for: BTreeMap<Channel, String>,
}

impl LocationConfig {
    /// Whether the branch sends differently from its tenant.
    pub fn overrides_sending(&self) -> bool {
        self.channels.is_some() || !self.providers.is_empty() || !self.provider_for.is_empty()
    }
}

/// Provider sections are secrets: only their names are printed.
impl fmt::Debug for LocationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocationConfig")
            .field("name", &self.name)
            .field("time_zone", &self.time_zone)
            .field("time_zone_name", &self.time_zone_name)
            .field("vars", &self.vars)
            .field("channels", &self.channels)
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .field("provider_for", &self.provider_for)
            .finish()
    }
}

/// The tenant's provider sections with a branch's over them: a section the
/// branch names is merged key by key (an object over an object), else taken
/// whole.
pub fn merged_providers(
    tenant: &BTreeMap<String, serde_json::Value>,
    branch: &BTreeMap<String, serde_json::Value>,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = tenant.clone();
    for (name, over) in branch {
        match (out.get_mut(name), over) {
            (Some(serde_json::Value::Object(base)), serde_json::Value::Object(o)) => {
                base.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            _ => {
                out.insert(name.clone(), over.clone());
            }
        }
    }
    out
}

/// The zone label when none is configured: Moscow's customary "Мск", else
/// nothing (a wrong label is worse than none).
pub fn default_zone_name(zone: &str) -> &'static str {
    if zone == "Europe/Moscow" {
        "Мск"
    } else {
        ""
    }
}

/// Where a message can go.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Whatsapp,
    Sms,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Sms => "sms",
            Channel::Email => "email",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelPolicy {
    #[serde(default = "default_channels")]
    pub default: Vec<Channel>,
    #[serde(flatten)]
    pub by_kind: BTreeMap<EventKind, Vec<Channel>>,
}

fn default_channels() -> Vec<Channel> {
    vec![Channel::Whatsapp, Channel::Sms]
}

impl Default for ChannelPolicy {
    fn default() -> Self {
        ChannelPolicy {
            default: default_channels(),
            by_kind: BTreeMap::new(),
        }
    }
}

impl ChannelPolicy {
    pub fn for_kind(&self, kind: EventKind) -> &[Channel] {
        self.by_kind.get(&kind).unwrap_or(&self.default)
    }
}

/// The message texts for one event kind. Text is minijinja over the
/// event's fields; see docs/TEMPLATES.md.
///
/// The fields at this level are the kind's default variant; `locales` holds
/// variants for one locale each. For a channel, the event's locale variant is
/// used when it has anything for that channel, else this default variant,
/// else the built-in text. Inside a variant a channel's own field
/// (`sms`, `whatsapp_text`, `email_text`, `whatsapp`) beats `text`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// Free text for every channel (SMS, WhatsApp free text, e-mail text part).
    pub text: Option<String>,
    /// SMS text instead of `text`.
    pub sms: Option<String>,
    /// WhatsApp free text instead of `text`.
    pub whatsapp_text: Option<String>,
    /// WhatsApp through an approved Meta template instead of free text
    /// (required outside the 24-hour customer window).
    pub whatsapp: Option<WhatsappTemplate>,
    /// E-mail subject (default: the start of the text) and HTML body
    /// (default: the text, escaped).
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    /// E-mail plain-text part instead of `text`.
    pub email_text: Option<String>,
    /// The locale of events that carry none (events without seed 000
    /// formatting options); `ru-RU` when not set.
    #[serde(default, deserialize_with = "de_opt_locale")]
    pub locale: Option<DateLocale>,
    /// Variants per locale: `[tenants.templates.<kind>.locales.en-US]`.
    #[serde(default, deserialize_with = "de_locales")]
    pub locales: Vec<(DateLocale, TemplateVariant)>,
}

/// The texts of one locale; the same fields and rules as [`TemplateConfig`].
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TemplateVariant {
    pub text: Option<String>,
    pub sms: Option<String>,
    pub whatsapp_text: Option<String>,
    pub whatsapp: Option<WhatsappTemplate>,
    pub email_subject: Option<String>,
    pub email_html: Option<String>,
    pub email_text: Option<String>,
}

impl TemplateConfig {
    /// The default variant (the fields outside `locales`).
    pub fn base(&self) -> TemplateVariant {
        TemplateVariant {
            text: self.text.clone(),
            sms: self.sms.clone(),
            whatsapp_text: self.whatsapp_text.clone(),
            whatsapp: self.whatsapp.clone(),
            email_subject: self.email_subject.clone(),
            email_html: self.email_html.clone(),
            email_text: self.email_text.clone(),
        }
    }

    pub fn variant(&self, locale: DateLocale) -> Option<&TemplateVariant> {
        self.locales
            .iter()
            .find(|(l, _)| *l == locale)
            .map(|(_, v)| v)
    }
}

fn parse_locale<E: serde::de::Error>(s: &str) -> Result<DateLocale, E> {
    DateLocale::parse(s)
        .ok_or_else(|| E::custom(format!("locale {s:?} is not supported; use ru-RU or en-US")))
}

fn de_opt_locale<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateLocale>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_locale(&s))
        .transpose()
}

fn de_locales<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(DateLocale, TemplateVariant)>, D::Error> {
    let map = BTreeMap::<String, TemplateVariant>::deserialize(d)?;
    let mut out: Vec<(DateLocale, TemplateVariant)> = Vec::with_capacity(map.len());
    for (key, variant) in map {
        let locale = parse_locale(&key)?;
        if out.iter().any(|(l, _)| *l == locale) {
            return Err(serde::de::Error::custom(format!(
                "locale {key:?} is given twice (another spelling of the same locale)"
            )));
        }
        out.push((locale, variant));
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    pub name: String,
    #[serde(default = "default_language")]
    pub language: String,
    /// Body parameters `{{1}}`, `{{2}}`, ... in order, each a minijinja expression.
    #[serde(default)]
    pub params: Vec<String>,
    /// The header's parameter, when the approved template's header has one.
    #[serde(default)]
    pub header: Option<WhatsappHeader>,
    /// The buttons that take a value (a URL's dynamic suffix, a quick
    /// reply's payload); static buttons need no entry.
    #[serde(default)]
    pub buttons: Vec<WhatsappButton>,
    /// Wazzup's own id of the same template (a GUID from its WABA template
    /// list): Wazzup sends templates by it, with the body parameters as
    /// `templateValues`.
    #[serde(default)]
    pub wazzup_template_id: Option<String>,
}

/// `header = { type = "image", link = "https://..." }`: every value is a
/// minijinja template like the body parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WhatsappHeader {
    /// A text header's one parameter.
    Text { text: String },
    /// An image header, by a public HTTPS link.
    Image { link: String },
    /// A document header (a PDF menu, a receipt), by link, with the file
    /// name the customer sees.
    Document {
        link: String,
        #[serde(default)]
        filename: Option<String>,
    },
}

/// `buttons = [{ type = "url", index = 0, suffix = "{{ review_path }}" }]`.
/// `index` is the button's position in the approved template (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WhatsappButton {
    /// A URL button whose approved URL ends in `{{1}}`: the suffix for it.
    Url { index: u8, suffix: String },
    /// A quick-reply button: the payload its tap sends back.
    QuickReply { index: u8, payload: String },
}

impl WhatsappButton {
    pub fn index(&self) -> u8 {
        match self {
            WhatsappButton::Url { index, .. } | WhatsappButton::QuickReply { index, .. } => *index,
        }
    }
}

fn default_language() -> String {
    "ru".into()
}

impl TenantConfig {
    /// A digest of everything configured for this tenant (its keys
    /// included, which Debug masks): tells a reload which tenants changed.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.id.as_bytes());
        for k in &self.keys {
            h.update([0]);
            h.update(k.as_bytes());
        }
        h.update(
            format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
                self.sources,
                self.channels,
                self.vars,
                self.templates,
                self.provider_for,
                self.time_zone,
                self.time_zone_name,
                self.locations,
                self.frequency_caps,
                self.delays,
                self.send_hours,
                self.hold_max_secs
            )
            .as_bytes(),
        );
        // serde_json::Value's Display is its JSON, maps in key order.
        for (name, v) in self.providers.iter().chain(self.lookup.iter()) {
            h.update(format!("|{name}={v}").as_bytes());
        }
        for (id, l) in &self.locations {
            for (name, v) in &l.providers {
                h.update(format!("|{id}.{name}={v}").as_bytes());
            }
        }
        h.finalize().into()
    }
}

impl fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConfig")
            .field("id", &self.id)
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| crate::mask::secret(k))
                    .collect::<Vec<_>>(),
            )
            .field("sources", &self.sources)
            .field("channels", &self.channels)
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    pub iiko: IikoSettings,
    pub rkeeper: RkeeperSettings,
    pub yclients: YclientsSettings,
    pub amocrm: AmocrmSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IikoSettings {
    /// Order statuses that mean "done, ask for a review" (delivery and table orders).
    pub final_statuses: Vec<String>,
}

impl Default for IikoSettings {
    fn default() -> Self {
        IikoSettings {
            final_statuses: vec!["Delivered".into(), "Closed".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RkeeperSettings {
    /// Compared case-insensitively. Delivery push labels and White Server
    /// values (`Complited` is the API's own spelling).
    pub final_statuses: Vec<String>,
}

impl Default for RkeeperSettings {
    fn default() -> Self {
        RkeeperSettings {
            final_statuses: vec!["Выполнен".into(), "Доставлен".into(), "Complited".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YclientsSettings {
    /// `attendance` values that count as a finished visit (1 = arrived).
    pub attendance: Vec<i64>,
}

impl Default for YclientsSettings {
    fn default() -> Self {
        YclientsSettings {
            attendance: vec![1],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmocrmSettings {
    /// Lead statuses that count as won (142 is the system "Успешно реализовано").
    pub won_status_ids: Vec<u64>,
    /// Custom field ids that hold the phone, tried before `code = PHONE` and
    /// the names Телефон / Phone.
    pub phone_field_ids: Vec<u64>,
}

impl Default for AmocrmSettings {
    fn default() -> Self {
        AmocrmSettings {
            won_status_ids: vec![142],
            phone_field_ids: Vec::new(),
        }
    }
}

/// A tenant as the services use it (keys are not kept here).
#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub sources: SourceSettings,
}

/// The stored key (for the constant-time comparison) and its tenant.
type KeyEntry = (Vec<u8>, Arc<Tenant>);

#[derive(Clone, Default)]
pub struct Tenants {
    by_key_hash: Arc<HashMap<[u8; 32], KeyEntry>>,
    by_id: Arc<HashMap<String, Arc<Tenant>>>,
}

pub const MIN_KEY_LEN: usize = 16;

impl Tenants {
    pub fn new(configs: Vec<TenantConfig>) -> Result<Tenants, String> {
        let mut by_key_hash = HashMap::new();
        let mut by_id = HashMap::new();
        for cfg in configs {
            if cfg.id.is_empty()
                || !cfg
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "tenant id {:?}: use letters, digits, '-' or '_'",
                    cfg.id
                ));
            }
            if cfg.keys.is_empty() {
                return Err(format!("tenant {}: at least one key is required", cfg.id));
            }
            let zones = std::iter::once(("time_zone".to_string(), &cfg.time_zone)).chain(
                cfg.locations
                    .iter()
                    .map(|(id, l)| (format!("locations.{id:?}.time_zone"), &l.time_zone)),
            );
            for (field, zone) in zones {
                if let Some(zone) = zone
                    && zone.parse::<chrono_tz::Tz>().is_err()
                {
                    return Err(format!(
                        "tenant {}: {field} {zone:?} is not an IANA time zone (e.g. Asia/Yekaterinburg)",
                        cfg.id
                    ));
                }
            }
            if let Some(id) = cfg.locations.keys().find(|id| id.trim().is_empty()) {
                return Err(format!("tenant {}: location id {id:?} is empty", cfg.id));
            }
            for (kind, delay) in &cfg.delays {
                delay
                    .validate(*kind)
                    .map_err(|e| format!("tenant {}: delays.{kind}: {e}", cfg.id))?;
            }
            for key in cfg.send_hours.keys() {
                if key != "default" && kind_named(key).is_none() {
                    return Err(format!(
                        "tenant {}: send_hours.{key}: not \"default\" nor an event kind",
                        cfg.id
                    ));
                }
            }
            for (kind, cap) in &cfg.frequency_caps {
                cap.validate()
                    .map_err(|e| format!("tenant {}: frequency_caps.{kind}: {e}", cfg.id))?;
            }
            let tenant = Arc::new(Tenant {
                id: cfg.id.clone(),
                sources: cfg.sources,
            });
            if by_id.insert(cfg.id.clone(), tenant.clone()).is_some() {
                return Err(format!("tenant {} is configured twice", cfg.id));
            }
            for key in cfg.keys {
                if key.len() < MIN_KEY_LEN {
                    return Err(format!(
                        "tenant {}: key {} is shorter than {MIN_KEY_LEN} characters",
                        cfg.id,
                        crate::mask::secret(&key)
                    ));
                }
                if by_key_hash
                    .insert(hash(&key), (key.clone().into_bytes(), tenant.clone()))
                    .is_some()
                {
                    return Err(format!(
                        "key {} is used by more than one tenant entry",
                        crate::mask::secret(&key)
                    ));
                }
            }
        }
        Ok(Tenants {
            by_key_hash: Arc::new(by_key_hash),
            by_id: Arc::new(by_id),
        })
    }

    pub fn authenticate(&self, key: &str) -> Option<Arc<Tenant>> {
        let (stored, tenant) = self.by_key_hash.get(&hash(key))?;
        bool::from(stored.as_slice().ct_eq(key.as_bytes())).then(|| tenant.clone())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, keys: &[&str]) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            sources: SourceSettings::default(),
            channels: ChannelPolicy::default(),
            vars: BTreeMap::new(),
            templates: BTreeMap::new(),
            providers: BTreeMap::new(),
            provider_for: BTreeMap::new(),
            lookup: BTreeMap::new(),
            time_zone: None,
            time_zone_name: None,
            locations: BTreeMap::new(),
            frequency_caps: BTreeMap::new(),
            delays: BTreeMap::new(),
            send_hours: BTreeMap::new(),
            hold_max_secs: None,
        }
    }

    #[test]
    fn send_hours_parse_and_contain() {
        let h = SendHours::parse("10:00-21:00").unwrap();
        assert_eq!((h.from, h.to), (36_000, 75_600));
        assert!(h.contains(36_000) && h.contains(75_599) && !h.contains(75_600) && !h.contains(0));
        let night = SendHours::parse("22:00-06:30:15").unwrap();
        assert!(night.contains(23 * 3600) && night.contains(3600) && !night.contains(12 * 3600));
        assert!(SendHours::parse("00:00-24:00").unwrap().contains(86_399));
        for bad in [
            "10-21",
            "10:00",
            "10:00-10:00",
            "25:00-26:00",
            "10:60-11:00",
            "24:00-10:00",
            "a:b-c:d",
        ] {
            assert!(SendHours::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delays_and_send_hours_are_checked() {
        let mut c = cfg("acme", &["acme-key-000000001"]);
        c.delays.insert(
            EventKind::OrderCompleted,
            Delay {
                after_secs: Some(3600),
                before_start_secs: None,
            },
        );
        c.delays.insert(
            EventKind::BookingCreated,
            Delay {
                after_secs: None,
                before_start_secs: Some(7200),
            },
        );
        c.send_hours
            .insert("default".into(), SendHours::parse("10:00-21:00").unwrap());
        c.send_hours.insert(
            "booking_created".into(),
            SendHours::parse("08:00-22:00").unwrap(),
        );
        assert!(Tenants::new(vec![c.clone()]).is_ok());
        let mut bad = c.clone();
        bad.delays.insert(
            EventKind::OrderCompleted,
            Delay {
                after_secs: None,
                before_start_secs: Some(60),
            },
        );
        let err = Tenants::new(vec![bad]).err().expect("refused");
        assert!(
            err.contains("delays.order_completed: before_start_secs needs"),
            "{err}"
        );
        let mut bad = c.clone();
        bad.delays.insert(
            EventKind::DealWon,
            Delay {
                after_secs: None,
                before_start_secs: None,
            },
        );
        assert!(Tenants::new(vec![bad]).is_err());
        c.send_hours
            .insert("lunch".into(), SendHours::parse("12:00-13:00").unwrap());
        let err = Tenants::new(vec![c]).err().expect("refused");
        assert!(err.contains("send_hours.lunch"), "{err}");
    }

    #[test]
    fn a_frequency_cap_needs_a_place_and_a_window() {
        let mut c = cfg("acme", &["acme-key-000000001"]);
        c.frequency_caps.insert(
            EventKind::OrderCompleted,
            FrequencyCap {
                at_most: 1,
                window_secs: 2_592_000,
            },
        );
        assert!(Tenants::new(vec![c.clone()]).is_ok());
        c.frequency_caps.insert(
            EventKind::DealWon,
            FrequencyCap {
                at_most: 0,
                window_secs: 60,
            },
        );
        let err = Tenants::new(vec![c]).err().expect("refused");
        assert!(err.contains("frequency_caps.deal_won: at_most"), "{err}");
    }

    #[test]
    fn time_zones_of_tenant_and_locations_are_checked() {
        let mut c = cfg("acme", &["acme-key-000000001"]);
        c.time_zone = Some("Asia/Yekaterinburg".into());
        c.locations.insert(
            "org-2".into(),
            LocationConfig {
                time_zone: Some("Asia/Vladivostok".into()),
                ..LocationConfig::default()
            },
        );
        assert!(Tenants::new(vec![c.clone()]).is_ok());
        let mut bad = c.clone();
        bad.locations.get_mut("org-2").unwrap().time_zone = Some("Mars/Olympus".into());
        let err = Tenants::new(vec![bad]).err().expect("refused");
        assert!(
            err.contains("locations.\"org-2\".time_zone") && err.contains("Mars/Olympus"),
            "{err}"
        );
        c.time_zone = Some("MSK".into());
        let err = Tenants::new(vec![c]).err().expect("refused");
        assert!(err.contains("tenant acme: time_zone \"MSK\""), "{err}");
    }

    #[test]
    fn authenticates_each_key_of_its_tenant() {
        let t = Tenants::new(vec![
            cfg("acme", &["acme-key-000000001", "acme-key-000000002"]),
            cfg("salon", &["salon-key-00000001"]),
        ])
        .unwrap();
        assert_eq!(t.authenticate("acme-key-000000002").unwrap().id, "acme");
        assert_eq!(t.authenticate("salon-key-00000001").unwrap().id, "salon");
        assert!(t.authenticate("acme-key-00000000").is_none());
        assert!(t.authenticate("").is_none());
    }

    #[test]
    fn refuses_short_duplicate_and_shared_keys() {
        assert!(Tenants::new(vec![cfg("a", &["short"])]).is_err());
        assert!(
            Tenants::new(vec![
                cfg("a", &["k0000000000000001"]),
                cfg("a", &["k0000000000000002"])
            ])
            .is_err()
        );
        assert!(
            Tenants::new(vec![
                cfg("a", &["k0000000000000001"]),
                cfg("b", &["k0000000000000001"])
            ])
            .is_err()
        );
        assert!(Tenants::new(vec![cfg("bad id", &["k0000000000000001"])]).is_err());
    }

    fn templates_from_toml(body: &str) -> Result<BTreeMap<EventKind, TemplateConfig>, String> {
        let text = format!("[[tenants]]\nid = \"acme\"\nkeys = [\"acme-key-000000001\"]\n{body}");
        crate::config::Settings::from_toml(&text)
            .map(|mut s| s.tenants.remove(0).templates)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whatsapp_headers_and_buttons_parse_and_odd_ones_are_refused() {
        let t = templates_from_toml(
            r#"
[tenants.templates.order_completed.whatsapp]
name = "review"
params = ["{{ name }}"]
header = { type = "document", link = "https://cdn.example/m.pdf", filename = "Меню.pdf" }
buttons = [
  { type = "url", index = 0, suffix = "{{ review_path }}" },
  { type = "quick_reply", index = 2, payload = "stop" },
]
wazzup_template_id = "guid-1"
"#,
        )
        .unwrap();
        let wa = t[&EventKind::OrderCompleted].whatsapp.clone().unwrap();
        assert_eq!(
            wa.header,
            Some(WhatsappHeader::Document {
                link: "https://cdn.example/m.pdf".into(),
                filename: Some("Меню.pdf".into())
            })
        );
        assert_eq!(
            wa.buttons,
            vec![
                WhatsappButton::Url {
                    index: 0,
                    suffix: "{{ review_path }}".into()
                },
                WhatsappButton::QuickReply {
                    index: 2,
                    payload: "stop".into()
                },
            ]
        );
        assert_eq!(wa.wazzup_template_id.as_deref(), Some("guid-1"));
        for odd in [
            r#"header = { type = "video", link = "x" }"#,
            r#"header = { type = "image", url = "x" }"#,
            r#"buttons = [{ type = "url", index = 0 }]"#,
            r#"buttons = [{ type = "call", index = 0, suffix = "x" }]"#,
        ] {
            let toml =
                format!("[tenants.templates.order_completed.whatsapp]\nname = \"review\"\n{odd}\n");
            assert!(templates_from_toml(&toml).is_err(), "{odd}");
        }
    }

    #[test]
    fn templates_per_channel_and_locale_parse_from_toml() {
        let t = templates_from_toml(
            r#"
[tenants.templates.order_completed]
text = "base"
sms = "base sms"
whatsapp_text = "base wa"
email_text = "base email"
email_subject = "subject"
locale = "en-US"
whatsapp = { name = "review", params = ["{{ name }}"] }

[tenants.templates.order_completed.locales.en-US]
text = "english"
whatsapp = { name = "review_en", language = "en_US" }
"#,
        )
        .unwrap();
        let c = &t[&EventKind::OrderCompleted];
        assert_eq!(c.text.as_deref(), Some("base"));
        assert_eq!(c.sms.as_deref(), Some("base sms"));
        assert_eq!(c.whatsapp_text.as_deref(), Some("base wa"));
        assert_eq!(c.email_text.as_deref(), Some("base email"));
        assert_eq!(c.locale, Some(DateLocale::EnUs));
        assert_eq!(c.whatsapp.as_ref().unwrap().language, "ru");
        let en = c.variant(DateLocale::EnUs).expect("en-US variant");
        assert_eq!(en.text.as_deref(), Some("english"));
        let wa = en.whatsapp.as_ref().unwrap();
        assert_eq!(
            (wa.name.as_str(), wa.language.as_str()),
            ("review_en", "en_US")
        );
        assert!(c.variant(DateLocale::RuRu).is_none());
        assert_eq!(c.base().sms.as_deref(), Some("base sms"));
    }

    #[test]
    fn the_old_template_shape_still_parses() {
        let t = templates_from_toml(
            r#"
[tenants.templates.deal_won]
text = "t"
email_subject = "s"
email_html = "<p>h</p>"
whatsapp = { name = "n", language = "ru", params = ["{{ name }}"] }
"#,
        )
        .unwrap();
        let c = &t[&EventKind::DealWon];
        assert_eq!(c.email_html.as_deref(), Some("<p>h</p>"));
        assert!(c.locales.is_empty());
        assert_eq!(c.locale, None);
    }

    #[test]
    fn unknown_locales_and_fields_are_refused() {
        let err =
            templates_from_toml("[tenants.templates.deal_won.locales.fr-FR]\ntext = \"bonjour\"\n")
                .unwrap_err();
        assert!(err.contains("fr-FR"), "{err}");
        let err =
            templates_from_toml("[tenants.templates.deal_won]\nlocale = \"de\"\n").unwrap_err();
        assert!(err.contains("\"de\""), "{err}");
        let err =
            templates_from_toml("[tenants.templates.deal_won.locales.en-US]\ntelegram = \"x\"\n")
                .unwrap_err();
        assert!(err.contains("telegram"), "{err}");
    }

    #[test]
    fn debug_masks_keys() {
        let dbg = format!("{:?}", cfg("acme", &["acme-key-000000001"]));
        assert!(!dbg.contains("acme-key-000000001"), "{dbg}");
    }
}
