//! Kannel's delivery-report URL (`dlr-url`): the escapes filled as Kannel's smsbox fills them
//! for a report, each value URL-encoded. A report comes from the handset, so Kannel swaps the
//! numbers: `%p` (sender) is the number the message went to, `%P` (receiver) its sender.

/// What one report says.
pub struct Report<'a> {
    /// `%d`: the report's type, one bit of the mask (1 delivered, 2 failed, 8 SMSC accepted,
    /// 16 SMSC rejected).
    pub kind: u8,
    /// `%F`: the SMSC's message id.
    pub smsc_message_id: &'a str,
    /// `%p` and `%q`: the number the message went to, as the client wrote it.
    pub handset: &'a str,
    /// `%P` and `%Q`: the message's sender, as the client wrote it.
    pub sender: &'a str,
    /// `%t` and `%T`: when the report was made (unix seconds).
    pub at_unix: u64,
    /// `%A`: the SMSC's answer or receipt, in words.
    pub reply: &'a str,
    /// `%i`: the carrier (Kannel's smsc-id).
    pub carrier: &'a str,
    /// `%n`: the sendsms user.
    pub user: &'a str,
    /// `%c`: 0 (GSM 7-bit) or 2 (UCS-2).
    pub coding: u8,
    /// `%I`: the message's id at otpgate.
    pub message_id: &'a str,
}

/// `template` with every escape of `report` filled; unknown escapes stay as they are.
pub fn fill(template: &str, report: &Report<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(escape) = chars.next() else {
            out.push('%');
            break;
        };
        let value = match escape {
            'd' => report.kind.to_string(),
            'F' => report.smsc_message_id.to_string(),
            'p' => report.handset.to_string(),
            'P' => report.sender.to_string(),
            'q' => plus_for_00(report.handset),
            'Q' => plus_for_00(report.sender),
            't' => minute(report.at_unix),
            'T' => report.at_unix.to_string(),
            'A' => report.reply.to_string(),
            'i' => report.carrier.to_string(),
            'n' => report.user.to_string(),
            'c' => report.coding.to_string(),
            'I' => report.message_id.to_string(),
            '%' => {
                out.push('%');
                continue;
            }
            other => {
                out.push('%');
                out.push(other);
                continue;
            }
        };
        out.push_str(&url_encode(&value));
    }
    out
}

/// Why `template` cannot be a report URL, if it cannot.
pub fn problem(template: &str) -> Option<&'static str> {
    let lower = template.get(..8).unwrap_or(template).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || template.len() > 2048 {
        return Some("must be an http:// or https:// URL of at most 2048 characters");
    }
    let sample = Report {
        kind: 1,
        smsc_message_id: "id",
        handset: "+15550100",
        sender: "Acme",
        at_unix: 0,
        reply: "stat:DELIVRD",
        carrier: "carrier",
        user: "user",
        coding: 0,
        message_id: "0",
    };
    match fill(template, &sample).parse::<hyper::Uri>() {
        Ok(uri) if uri.host().is_some() => None,
        _ => Some("is not a valid URL"),
    }
}

/// Kannel's `%q`: a leading `00` written as `+`.
fn plus_for_00(number: &str) -> String {
    match number.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => number.to_string(),
    }
}

/// Kannel's `%t`: "YYYY-MM-DD HH:MM" in UTC.
fn minute(unix: u64) -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string();
    stamp.get(..16).unwrap_or_default().replace('T', " ")
}

/// As Kannel's `octstr_url_encode`: letters, digits and `-_.!~*'()` stay, a space is `+`, every
/// other byte `%XX`.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) => out.push(char::from(b)),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report<'static> {
        Report {
            kind: 1,
            smsc_message_id: "7f3a 01",
            handset: "00447700900123",
            sender: "+447700900999",
            at_unix: 1_764_684_000,
            reply: "id:7f3a stat:DELIVRD err:000",
            carrier: "vodafone",
            user: "shop",
            coding: 2,
            message_id: "abc",
        }
    }

    #[test]
    fn every_escape_is_filled_and_encoded() {
        let url = fill("http://h/dlr?d=%d&F=%F&p=%p&P=%P&q=%q&Q=%Q&t=%t&T=%T&A=%A&i=%i&n=%n&c=%c&I=%I&x=%x&pct=%%", &report());
        assert_eq!(
            url,
            "http://h/dlr?d=1&F=7f3a+01&p=00447700900123&P=%2B447700900999&q=%2B447700900123&Q=%2B447700900999\
             &t=2025-12-02+14%3A00&T=1764684000&A=id%3A7f3a+stat%3ADELIVRD+err%3A000&i=vodafone&n=shop&c=2&I=abc&x=%x&pct=%"
        );
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(problem("http://example.com/dlr?type=%d"), None);
        assert_eq!(problem("https://example.com/x"), None);
        assert!(problem("ftp://example.com/").is_some());
        assert!(problem("http://").is_some());
        assert!(problem("http://exa mple.com/").is_some());
        assert!(problem(&format!("http://example.com/{}", "a".repeat(2048))).is_some());
    }
}
