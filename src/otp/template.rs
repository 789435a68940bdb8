//! The OTP SMS text: a template per locale, plus the optional autofill lines.
//!
//! Placeholders: `{code}` (required), `{brand}`, `{minutes}`, `{context}`. With a WebOTP domain the
//! message ends with the line `@domain #code` (browsers and iOS offer the code for that site
//! only); with an Android SMS Retriever app hash it ends with the 11-character hash (both stay
//! last, whatever the length). The text must fit `otp.max_segments` SMS (one by default),
//! checked at config load for the longest code.

/// What varies per message.
pub struct Fill<'a> {
    pub code: &'a str,
    pub brand: &'a str,
    pub minutes: u64,
    pub context: &'a str,
}

/// How every OTP text ends.
#[derive(Debug, Clone, Default)]
pub struct Autofill {
    pub webotp_domain: Option<String>,
    pub android_app_hash: Option<String>,
}

pub fn render(template: &str, fill: &Fill<'_>, autofill: &Autofill) -> String {
    let mut text = template
        .replace("{code}", fill.code)
        .replace("{brand}", fill.brand)
        .replace("{minutes}", &fill.minutes.to_string())
        .replace("{context}", fill.context);
    if let Some(hash) = &autofill.android_app_hash {
        text.push('\n');
        text.push_str(hash);
    }
    if let Some(domain) = &autofill.webotp_domain {
        text.push_str(&format!("\n\n@{domain} #{}", fill.code));
    }
    text
}

/// The text with the code replaced by asterisks: what the store keeps.
pub fn mask(text: &str, code: &str) -> String {
    text.replace(code, &"*".repeat(code.len()))
}

/// Checks a template at config load: it names `{code}` and fits `max_segments` SMS with the
/// longest code, the given brand and TTL.
pub fn validate(template: &str, brand: &str, minutes: u64, autofill: &Autofill, max_segments: usize) -> Result<(), String> {
    if !template.contains("{code}") {
        return Err("must contain {code}".into());
    }
    if let Some(c) = template.chars().chain(brand.chars()).find(|&c| hidden(c)) {
        return Err(format!("holds the invisible or format character U+{:04X}; an SMS must show what it says", u32::from(c)));
    }
    let fill = Fill { code: "0000000000", brand, minutes, context: "" };
    let (encoding, segments) = super::measured(&render(template, &fill, autofill));
    match usize::from(segments) <= max_segments {
        true => Ok(()),
        false => Err(format!(
            "takes {segments} SMS as {} with a 10-digit code; otp.max_segments allows {max_segments}",
            encoding.map_or("?", crate::sms::Encoding::name)
        )),
    }
}

/// Characters that change how a text displays without showing themselves: controls, Unicode
/// format characters (general category Cf: bidi overrides and isolates, zero-width spaces and
/// joiners, soft hyphen, word joiner, BOM, tags ...) and blank fillers. In an OTP's context or
/// template they let an SMS show "pay 25.00 EUR" while the code is bound to another string.
pub fn hidden(c: char) -> bool {
    let u = u32::from(c);
    c.is_control()
        || matches!(
            u,
            0x00AD | 0x034F | 0x061C | 0x06DD | 0x070F | 0x08E2 | 0x115F | 0x1160 | 0x17B4 | 0x17B5
                | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
                | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB
                | 0x0600..=0x0605 | 0x0890..=0x0891 | 0x110BD | 0x110CD | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F | 0xE0100..=0xE01EF
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &str = "{code} is your {brand} code. It expires in {minutes} min. Never share it.";

    #[test]
    fn renders_with_autofill_lines() {
        let fill = Fill { code: "123456", brand: "Acme", minutes: 5, context: "" };
        let autofill = Autofill { webotp_domain: Some("acme.example".into()), android_app_hash: None };
        assert_eq!(render(EN, &fill, &autofill), "123456 is your Acme code. It expires in 5 min. Never share it.\n\n@acme.example #123456");
        let android = Autofill { webotp_domain: None, android_app_hash: Some("FA+9qCX9VSu".into()) };
        assert!(render(EN, &fill, &android).ends_with("\nFA+9qCX9VSu"));
    }

    #[test]
    fn masking_hides_every_copy_of_the_code() {
        let text = "123456 is your code\n\n@a.example #123456";
        assert_eq!(mask(text, "123456"), "****** is your code\n\n@a.example #******");
    }

    #[test]
    fn templates_that_cannot_work_are_refused() {
        let none = Autofill::default();
        assert!(validate(EN, "Acme", 5, &none, 1).is_ok());
        assert!(validate("Your code is ready", "Acme", 5, &none, 1).unwrap_err().contains("{code}"));
        let long = format!("{EN} {}", "x".repeat(120));
        assert!(validate(&long, "Acme", 5, &none, 1).unwrap_err().contains("takes 2 SMS as gsm7"));
        assert!(validate(&long, "Acme", 5, &none, 2).is_ok());
        // UCS-2 halves the room: 70 characters.
        let cyrillic = format!("{{code}} {}", "ж".repeat(60));
        assert!(validate(&cyrillic, "Acme", 5, &none, 1).unwrap_err().contains("as ucs2"));
        assert!(validate(&cyrillic, "Acme", 5, &none, 2).is_ok());
    }
}
