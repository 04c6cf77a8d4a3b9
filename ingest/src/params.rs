//! The webhook URL's parameters (seed 000): the key, the formatting options
//! and the Wazzup routing that travel with every event, and the parameter
//! check answered on `GET /api/webhook/{source}`.

use std::collections::BTreeMap;
use std::str::FromStr;

use shared::event::{DateLocale, FormatOptions, HideFlag, Route};

#[derive(Debug, Default)]
pub struct UrlParams {
    pub key: Option<String>,
    /// Present when any formatting parameter was given.
    pub format: Option<FormatOptions>,
    pub route: Option<Route>,
    /// Problems that make the URL unusable ("Wrong parameters").
    pub errors: Vec<String>,
    /// Things worth knowing that do not stop the webhook working.
    pub warnings: Vec<String>,
}

const TEXT_PARAMS: [&str; 5] = [
    "message",
    "resource_name",
    "detail_section_name",
    "case_type_name",
    "time_zone_name",
];
const MAX_TEXT: usize = 1000;

pub fn parse(query: &str) -> UrlParams {
    let mut out = UrlParams::default();
    // serde_urlencoded decodes invalid UTF-8 lossily (`%FF` becomes U+FFFD),
    // so a message percent-encoded in windows-1251 would reach customers as
    // "����": the URL is wrong, and the parameter check says so. The rest
    // is still read, so the key authenticates and every problem is named.
    if !valid_utf8_once_decoded(query) {
        out.errors.push(
            "the query string is not UTF-8 once percent-decoded; percent-encode text as UTF-8 \
             (not windows-1251)"
                .into(),
        );
    }
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(query) {
        Ok(p) => p,
        Err(_) => {
            out.errors
                .push("the query string is not valid URL encoding".into());
            return out;
        }
    };
    let mut format = FormatOptions::default();
    let mut any_format = false;
    let mut wazzup: BTreeMap<&'static str, String> = BTreeMap::new();

    for (name, value) in pairs {
        match name.as_str() {
            "key" => out.key = Some(value),
            "date_locales" => {
                any_format = true;
                match DateLocale::parse(&value) {
                    Some(l) => format.date_locale = l,
                    None => out.errors.push(format!(
                        "date_locales {value:?} is not supported; use ru-RU or en-US"
                    )),
                }
            }
            "time_zone" => {
                any_format = true;
                match chrono_tz::Tz::from_str(&value) {
                    Ok(tz) => format.time_zone = tz.name().to_string(),
                    Err(_) => out.errors.push(format!(
                        "time_zone {value:?} is not an IANA time zone (e.g. Europe/Moscow, Asia/Yekaterinburg)"
                    )),
                }
            }
            "key_api" | "channel_id" | "chat_type" => {
                let slot = match name.as_str() {
                    "key_api" => "key_api",
                    "channel_id" => "channel_id",
                    _ => "chat_type",
                };
                wazzup.insert(slot, value);
            }
            n if TEXT_PARAMS.contains(&n) => {
                any_format = true;
                if value.chars().count() > MAX_TEXT {
                    out.errors
                        .push(format!("{n} is longer than {MAX_TEXT} characters"));
                    continue;
                }
                match n {
                    "message" => format.message = Some(value),
                    "resource_name" => format.resource_name = Some(value),
                    "detail_section_name" => format.detail_section_name = Some(value),
                    "case_type_name" => format.case_type_name = Some(value),
                    _ => format.time_zone_name = value,
                }
            }
            n if n.starts_with("hide_") => {
                any_format = true;
                match (HideFlag::from_param(n), parse_bool(&value)) {
                    (Some(flag), Some(b)) => {
                        format.hide.insert(flag, b);
                    }
                    (Some(_), None) => out
                        .errors
                        .push(format!("{n}={value:?} is not true or false")),
                    (None, _) => out.errors.push(format!(
                        "unknown flag {n}; known: {}",
                        HideFlag::ALL.map(HideFlag::param).join(", ")
                    )),
                }
            }
            other => out
                .warnings
                .push(format!("unknown parameter {other:?} is ignored")),
        }
    }
    if any_format {
        out.format = Some(format);
    }
    out.route = wazzup_route(wazzup, &mut out.errors);
    out
}

/// Seed 000's Wazzup routing: all three parameters or none. Every problem
/// is named, so one look at the check answer fixes the whole URL.
fn wazzup_route(mut p: BTreeMap<&'static str, String>, errors: &mut Vec<String>) -> Option<Route> {
    if p.is_empty() {
        return None;
    }
    let (key, channel, chat) = (
        p.remove("key_api"),
        p.remove("channel_id"),
        p.remove("chat_type"),
    );
    let before = errors.len();
    let missing: Vec<&str> = [
        ("key_api", &key),
        ("channel_id", &channel),
        ("chat_type", &chat),
    ]
    .iter()
    .filter(|(_, v)| v.as_deref().is_none_or(str::is_empty))
    .map(|(n, _)| *n)
    .collect();
    if !missing.is_empty() {
        errors.push(format!(
            "Wazzup routing needs key_api, channel_id and chat_type; missing {}",
            missing.join(", ")
        ));
    }
    if let Some(c) = channel.as_deref().filter(|c| !c.is_empty())
        && uuid::Uuid::parse_str(c).is_err()
    {
        errors.push(
            "channel_id is not a channel GUID (copy it from the channel's settings URL in Wazzup)"
                .into(),
        );
    }
    if let Some(t) = chat.as_deref().filter(|t| !t.is_empty())
        && t != "whatsapp"
    {
        errors.push(format!("chat_type {t:?} is not supported; use whatsapp"));
    }
    if let Some(k) = key.as_deref().filter(|k| !k.is_empty())
        && (k.len() < 16 || !k.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        errors.push("key_api does not look like a Wazzup API key".into());
    }
    if errors.len() > before {
        return None;
    }
    Some(Route::Wazzup {
        api_key: key.unwrap_or_default(),
        channel_id: channel.unwrap_or_default(),
        chat_type: chat.unwrap_or_default(),
    })
}

/// True when every `&`-separated part of the query is UTF-8 once its
/// percent escapes are decoded (a `%` not followed by two hex digits stays
/// as it is, as form decoding does).
fn valid_utf8_once_decoded(query: &str) -> bool {
    query.split('&').all(|part| {
        let bytes = part.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
            match (b, hex(i + 1), hex(i + 2)) {
                (b'%', Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        std::str::from_utf8(&out).is_ok()
    })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_example_url_is_accepted() {
        let p = parse(
            "key_api=f8f1955587ac6d7894cee95f92dcaca4&channel_id=3349fab8-b01b-4232-b9cb-a15ec3acc053\
             &chat_type=whatsapp&message=%D0%92%D1%8B%20%D0%B7%D0%B0%D0%BF%D0%B8%D1%81%D0%B0%D0%BD%D1%8B",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.format.unwrap().message.as_deref(), Some("Вы записаны"));
        assert!(
            matches!(p.route, Some(Route::Wazzup { ref chat_type, .. }) if chat_type == "whatsapp")
        );
    }

    #[test]
    fn formatting_options_are_validated() {
        let p = parse(
            "time_zone=Asia/Yekaterinburg&date_locales=en-US&hide_url=true&hide_contact_info=false",
        );
        assert!(p.errors.is_empty());
        let f = p.format.unwrap();
        assert_eq!(f.time_zone, "Asia/Yekaterinburg");
        assert_eq!(f.date_locale, DateLocale::EnUs);
        assert!(f.hide[&HideFlag::Url]);
        assert!(!f.hide[&HideFlag::ContactInfo]);
        assert!(!f.hide[&HideFlag::Address], "seed default");
    }

    #[test]
    fn wrong_parameters_are_each_named() {
        let p = parse(
            "time_zone=Mars/Base&date_locales=fr-FR&hide_everything=true&hide_url=maybe&chat_type=telegram",
        );
        let all = p.errors.join("\n");
        for needle in [
            "Mars/Base",
            "fr-FR",
            "hide_everything",
            "hide_url",
            "key_api",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
    }

    /// Found by the hostile-input test: `message=%FF` was taken as "\u{fffd}"
    /// and queued; a windows-1251 encoded message (`%C2%FB` = "Вы" in cp1251)
    /// must be refused, not sent to customers as replacement characters.
    #[test]
    fn parameters_that_are_not_utf8_once_decoded_are_wrong() {
        for q in [
            "message=%FF",
            "key=abc&message=%C2%FB%20%E7%E0%EF%E8%F1%E0%ED%FB",
            "%C0%AF=1",
        ] {
            let p = parse(q);
            assert_eq!(p.errors.len(), 1, "{q}: {:?}", p.errors);
            assert!(p.errors[0].contains("not UTF-8"), "{q}: {:?}", p.errors);
        }
        // The key is still read, so the webhook answers 400 "wrong
        // parameters" rather than 401.
        assert_eq!(parse("key=abc&message=%FF").key.as_deref(), Some("abc"));
        // Stray '%' and '+' are tolerated as before.
        let p = parse("message=100%+sure&key=a%");
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.format.and_then(|f| f.message).as_deref(),
            Some("100% sure")
        );
    }

    #[test]
    fn unknown_parameters_only_warn_and_key_is_taken() {
        let p = parse("key=abc&utm_source=x");
        assert!(p.errors.is_empty());
        assert_eq!(p.key.as_deref(), Some("abc"));
        assert_eq!(p.warnings.len(), 1);
        assert!(p.format.is_none());
    }
}
