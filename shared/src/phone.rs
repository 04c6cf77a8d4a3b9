//! Phone normalisation to E.164 (default region +7, RU/KZ), as providers.md
//! part C describes, on top of libphonenumber's metadata (`phonenumber` crate).
//!
//! A [`Phone`] prints masked (`Display`/`Debug`), so logging one by accident
//! does not leak it; only serialisation and [`Phone::e164`] give the number.

use std::fmt;

use phonenumber::{Type, country};
use serde::{Deserialize, Serialize};

/// A normalised, mobile-capable phone number in E.164 (`+79161234567`).
///
/// Read back from JSON (an event off the queue) it must still look like
/// E.164, so [`Phone::digits`] and the providers can rely on the shape; the
/// number itself is not re-validated against the metadata, which may have
/// changed since ingest accepted it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Phone(String);

impl From<Phone> for String {
    fn from(p: Phone) -> String {
        p.0
    }
}

impl TryFrom<String> for Phone {
    type Error = &'static str;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let digits = s
            .strip_prefix('+')
            .ok_or("phone is not E.164: no leading +")?;
        if (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
        {
            Ok(Phone(s))
        } else {
            Err("phone is not E.164: + and 8 to 15 digits")
        }
    }
}

impl Phone {
    /// `+79161234567`: Meta, 360dialog.
    pub fn e164(&self) -> &str {
        &self.0
    }

    /// `79161234567`: Wazzup `chatId`, SMS.ru, Exolve, and for matching the
    /// digits-only `recipient_id`/`wa_id` of provider callbacks.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The number's country (CLDR region, `RU`, `KZ`), as libphonenumber
    /// reads it; a Russian mobile (`+79…`) without parsing.
    pub fn region(&self) -> Option<String> {
        if self.0.starts_with("+79") && self.0.len() == 12 {
            return Some("RU".into());
        }
        let n = phonenumber::parse(None, &self.0).ok()?;
        n.country().id().map(|id| id.as_ref().to_string())
    }

    /// Accepts an already normalised number (e.g. read back from an event),
    /// re-validating it.
    pub fn parse_e164(e164: &str) -> Result<Self, PhoneError> {
        if !e164.starts_with('+') {
            return Err(PhoneError::Invalid);
        }
        normalise_one(e164)
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::mask::phone(&self.0))
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({self})")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("no phone number")]
    Empty,
    #[error("invalid phone number")]
    Invalid,
    #[error("phone number is a landline, not reachable by WhatsApp or SMS")]
    Landline,
}

impl PhoneError {
    /// Short, stable reason for API answers and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            PhoneError::Empty => "no phone",
            PhoneError::Invalid => "invalid phone",
            PhoneError::Landline => "landline phone",
        }
    }
}

/// Normalises a phone field as typed by a person or sent by a POS. A field
/// may hold several numbers (`,`, `;`, `/`, new line): the first valid mobile
/// one wins. The error is the most telling one seen (landline over invalid).
pub fn normalise(raw: &str) -> Result<Phone, PhoneError> {
    let mut worst = PhoneError::Empty;
    for candidate in raw.split([',', ';', '/', '\n', '\r', '|']) {
        if candidate.trim().is_empty() {
            continue;
        }
        match normalise_one(candidate) {
            Ok(phone) => return Ok(phone),
            Err(PhoneError::Landline) => worst = PhoneError::Landline,
            Err(e) if worst == PhoneError::Empty => worst = e,
            Err(_) => {}
        }
    }
    Err(worst)
}

/// Tries candidates in priority order (e.g. the phone paths a source lists);
/// returns the first that normalises, or the most telling error.
pub fn first_valid<'a>(candidates: impl IntoIterator<Item = &'a str>) -> Result<Phone, PhoneError> {
    let mut worst = PhoneError::Empty;
    for c in candidates {
        match normalise(c) {
            Ok(p) => return Ok(p),
            Err(PhoneError::Empty) => {}
            Err(PhoneError::Landline) => worst = PhoneError::Landline,
            Err(e) if worst == PhoneError::Empty => worst = e,
            Err(_) => {}
        }
    }
    Err(worst)
}

fn normalise_one(raw: &str) -> Result<Phone, PhoneError> {
    let trimmed = raw.trim();
    let plus = trimmed.starts_with('+');
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return Err(PhoneError::Invalid);
    }
    // Anything but digits, separators and one leading '+' means this is not a
    // phone (e.g. "call me", "доб. 12" is tolerated only as digits would merge).
    if trimmed
        .chars()
        .any(|c| !(c.is_ascii_digit() || " -().+\u{a0}\u{2011}\u{2012}\u{2013}\t".contains(c)))
    {
        return Err(PhoneError::Invalid);
    }
    let international = if plus {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if digits.len() == 11 && digits.starts_with('8') {
        format!("7{}", &digits[1..])
    } else if digits.len() == 11 && digits.starts_with('7') {
        digits
    } else if digits.len() == 10 && digits.starts_with('9') {
        format!("7{digits}")
    } else {
        return Err(PhoneError::Invalid);
    };
    if international.len() > 15 || international.len() < 8 {
        return Err(PhoneError::Invalid);
    }
    let e164 = format!("+{international}");
    if is_russian_mobile(&international) {
        return Ok(Phone(e164));
    }
    classify(e164)
}

/// `79` and nine digits: Russia's whole mobile range (libphonenumber's RU
/// mobile pattern is `9\d{9}`), which is most of what the sources send. Taken
/// without the full parse, which was a tenth of the ingest's CPU under load;
/// a test checks libphonenumber agrees for every `+79xx` block.
fn is_russian_mobile(international: &str) -> bool {
    international.len() == 11 && international.starts_with("79")
}

/// The full check by libphonenumber's metadata: valid, and a number that can
/// receive a message.
fn classify(e164: String) -> Result<Phone, PhoneError> {
    let parsed =
        phonenumber::parse(Some(country::Id::RU), &e164).map_err(|_| PhoneError::Invalid)?;
    if !phonenumber::is_valid(&parsed) {
        return Err(PhoneError::Invalid);
    }
    match parsed.number_type(&phonenumber::metadata::DATABASE) {
        Type::Mobile | Type::FixedLineOrMobile | Type::Pager | Type::PersonalNumber => {
            Ok(Phone(e164))
        }
        Type::FixedLine
        | Type::TollFree
        | Type::PremiumRate
        | Type::SharedCost
        | Type::Voip
        | Type::Uan => Err(PhoneError::Landline),
        _ => Err(PhoneError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_russian_mobile_fast_path_agrees_with_libphonenumber() {
        for block in 900..=999 {
            for tail in ["0000000", "1234567", "9999999", "5550123"] {
                let international = format!("7{block}{tail}");
                assert!(is_russian_mobile(&international));
                let full = classify(format!("+{international}"));
                assert!(
                    matches!(&full, Ok(p) if p.e164() == format!("+{international}")),
                    "+{international}: libphonenumber says {full:?}"
                );
            }
        }
        assert!(!is_russian_mobile("74951234567"), "Moscow landline");
        assert!(!is_russian_mobile("77011234567"), "Kazakhstan");
        assert!(!is_russian_mobile("7912345678"), "too short");
    }

    fn ok(raw: &str) -> String {
        normalise(raw)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            .e164()
            .to_string()
    }

    #[test]
    fn russian_mobile_in_every_typed_form() {
        for raw in [
            "8 (916) 123-45-67",
            "+7 916 123 45 67",
            "79161234567",
            "9161234567",
            "+7(916)123-45-67",
            "8-916-123-45-67",
            " +79161234567 ",
            "0079161234567",
            "+7\u{a0}916\u{a0}123\u{a0}45\u{a0}67",
        ] {
            assert_eq!(ok(raw), "+79161234567", "{raw}");
        }
    }

    #[test]
    fn kazakh_mobile_stays_kazakh() {
        assert_eq!(ok("+77770220606"), "+77770220606");
        assert_eq!(ok("87770220606"), "+77770220606");
        assert_eq!(ok("77771234567"), "+77771234567");
    }

    #[test]
    fn landlines_are_refused_as_landlines() {
        assert_eq!(normalise("+7 495 123-45-67"), Err(PhoneError::Landline));
        assert_eq!(normalise("8 (495) 765-43-21"), Err(PhoneError::Landline));
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for raw in [
            "",
            "   ",
            "abc",
            "12345",
            "+",
            "+7 916",
            "call me",
            "7916123456789012345",
            "٣٣٣٣٣٣٣٣",
        ] {
            assert!(normalise(raw).is_err(), "{raw:?}");
        }
        assert_eq!(normalise(""), Err(PhoneError::Empty));
        assert_eq!(normalise("abc"), Err(PhoneError::Invalid));
    }

    #[test]
    fn several_numbers_take_the_first_valid() {
        assert_eq!(ok("+7 495 123-45-67, 8 916 123 45 67"), "+79161234567");
        assert_eq!(ok("garbage; 89161234567 / 89031234567"), "+79161234567");
    }

    #[test]
    fn foreign_mobile_with_plus_is_kept() {
        assert_eq!(ok("+49 151 1234 5678"), "+4915112345678");
    }

    #[test]
    fn priority_list_skips_missing_and_bad() {
        assert_eq!(
            first_valid(["", "nonsense", "+79161234567"]).map(|p| p.digits().to_string()),
            Ok("79161234567".into())
        );
        assert_eq!(first_valid(["", " "]), Err(PhoneError::Empty));
        assert_eq!(first_valid(["+74951234567"]), Err(PhoneError::Landline));
    }

    /// Found writing the queue-decoder fuzz target, and by cargo-fuzz
    /// (`queue_messages`) before the fix: `{"recipient":{"phone":""}}`
    /// decoded into `Phone("")`, and `digits()` (Wazzup chatId, SMS.ru `to`)
    /// then panicked slicing `[1..]`; `"abc"` would have been sent as `bc`.
    #[test]
    fn only_e164_reads_back_from_json() {
        for bad in [
            "\"\"",
            "\"+\"",
            "\"é\"",
            "\"79161234567\"",
            "\"+7916abc4567\"",
            "\"+0123456789\"",
            "\"+1234567\"",
            "\"+1234567890123456\"",
        ] {
            assert!(serde_json::from_str::<Phone>(bad).is_err(), "{bad}");
        }
        let p: Phone = serde_json::from_str("\"+79161234567\"").unwrap();
        assert_eq!(p.digits(), "79161234567");
    }

    #[test]
    fn display_is_masked() {
        let p = normalise("+79161234567").unwrap();
        assert_eq!(p.to_string(), "+7******4567");
        assert!(!format!("{p:?}").contains("1234567"));
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"+79161234567\"");
    }

    #[test]
    fn a_number_knows_its_country() {
        let region = |p: &str| Phone::parse_e164(p).expect("valid").region();
        assert_eq!(region("+79161234567").as_deref(), Some("RU"));
        assert_eq!(region("+77011234567").as_deref(), Some("KZ"));
        assert_eq!(region("+375291234567").as_deref(), Some("BY"));
        assert_eq!(region("+4915112345678").as_deref(), Some("DE"));
    }
}
