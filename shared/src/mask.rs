//! Masking of personal data and secrets for logs, CLI output and error bodies.
//!
//! Phones, e-mails and keys never reach a log line or a metric label in full:
//! every place that prints one goes through these functions.

/// `+79161234567` → `+7*******4567`: country code and the last four digits stay,
/// enough to tell two customers apart in a log without identifying either.
pub fn phone(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.len() <= 4 {
        return "*".repeat(digits.len().max(1));
    }
    let plus = if phone.trim_start().starts_with('+') {
        "+"
    } else {
        ""
    };
    let head: String = digits[..1].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{plus}{head}{}{tail}", "*".repeat(digits.len() - 5))
}

/// `ivan.petrov@mail.ru` → `i***@mail.ru`.
pub fn email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// A person's name, or any short personal text (an address): its first
/// letter, nothing more (`Иван Петров` → `И***`).
pub fn name(name: &str) -> String {
    match name.trim().chars().next() {
        Some(first) => format!("{first}***"),
        None => String::new(),
    }
}

/// API keys and tokens: the first two characters and the length, nothing more.
pub fn secret(secret: &str) -> String {
    let n = secret.chars().count();
    if n < 8 {
        return format!("***({n})");
    }
    let head: String = secret.chars().take(2).collect();
    format!("{head}***({n})")
}

/// A URL with its credentials hidden: `redis://:pw@host:6379` becomes
/// `redis://***@host:6379`.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// The shortest quoted value [`quoted`] masks: a webhook key's minimum.
const QUOTED_SECRET_LEN: usize = 16;

/// An error message with its long double-quoted values masked as secrets:
/// configuration errors quote what they found (`invalid type: string
/// "<a webhook key>"`), which must not reach a log line. Values shorter
/// than a webhook key (16 characters: a locale, a channel, a field) stay
/// readable, so the operator still sees what was wrong.
pub fn quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push('"');
        if inside && part.chars().count() >= QUOTED_SECRET_LEN {
            out.push_str(&secret(part));
        } else {
            out.push_str(part);
        }
        inside = !inside;
    }
    out
}

/// Masks anything in free text that looks like a phone number (a run of 7+
/// digits with the usual separators) or an e-mail address. Used on provider
/// answers and parse errors that may echo customer data back.
pub fn text(input: &str) -> String {
    let emails_masked = mask_emails(input);
    mask_digit_runs(&emails_masked)
}

fn mask_emails(input: &str) -> String {
    let is_sep = |c: char| c.is_whitespace() || "\"',;<>()[]{}".contains(c);
    let mut out = String::with_capacity(input.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            out.push_str(&email(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in input.chars() {
        if is_sep(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn mask_digit_runs(input: &str) -> String {
    let in_run = |c: char| c.is_ascii_digit() || "+-() .\u{a0}".contains(c);
    let mut out = String::with_capacity(input.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.chars().filter(|c| c.is_ascii_digit()).count();
        if digits >= 7 {
            let trimmed = run.trim_end_matches(|c: char| !c.is_ascii_digit());
            let trailing = &run[trimmed.len()..];
            let lead_len = trimmed.len()
                - trimmed
                    .trim_start_matches(|c: char| c != '+' && !c.is_ascii_digit())
                    .len();
            out.push_str(&trimmed[..lead_len]);
            out.push_str(&phone(&trimmed[lead_len..]));
            out.push_str(trailing);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in input.chars() {
        if in_run(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_keeps_country_and_last_four() {
        assert_eq!(phone("+79161234567"), "+7******4567");
        assert_eq!(phone("79161234567"), "7******4567");
        assert_eq!(phone("123"), "***");
    }

    #[test]
    fn email_keeps_first_letter_and_domain() {
        assert_eq!(email("ivan.petrov@mail.ru"), "i***@mail.ru");
        assert_eq!(email("not-an-email"), "***");
    }

    #[test]
    fn url_hides_credentials_only() {
        assert_eq!(
            url("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(url("rediss://user:pw@h"), "rediss://***@h");
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(url("redis://h/path@x"), "redis://h/path@x");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn secret_shows_no_more_than_two_chars() {
        assert_eq!(secret("f8f1955587ac4d8894cee95f92dcaca4"), "f8***(32)");
        assert_eq!(secret("short"), "***(5)");
    }

    #[test]
    fn text_masks_phones_and_emails_inside_prose() {
        let masked = text("number +7 916 123-45-67 rejected, mail ivan@mail.ru \"79161234567\"");
        assert!(!masked.contains("123-45-67"), "{masked}");
        assert!(!masked.contains("79161234567"), "{masked}");
        assert!(!masked.contains("ivan@"), "{masked}");
        assert!(masked.contains("rejected"));
    }

    #[test]
    fn quoted_values_are_masked_and_the_rest_kept() {
        let m = quoted(
            r#"invalid type: string "acme-key-0123456789", expected a sequence for key `tenants`"#,
        );
        assert!(!m.contains("acme-key-0123456789"), "{m}");
        assert!(m.starts_with("invalid type: string \""), "{m}");
        assert!(
            m.ends_with("\", expected a sequence for key `tenants`"),
            "{m}"
        );
        assert_eq!(quoted("no quotes here"), "no quotes here");
        assert_eq!(
            quoted(r#"locale "fr-FR" is not supported"#),
            r#"locale "fr-FR" is not supported"#
        );
    }
}
