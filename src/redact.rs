//! Making server-provided text safe to keep in an error: a server may echo what it was sent (the
//! client assertion) or any token, raw, URL-encoded or JSON-escaped.
//!
//! Two rules, both applied to what is kept:
//!
//! - **Token-like runs.** The text is cut into pieces at whitespace, control characters and the
//!   punctuation that no JWT, base64, percent-encoding or JSON escape contains (`"`, `'`, `<`,
//!   `>`, `{`, `}`, `[`, `]`, `(`, `)`, `,`, `:`, `;`, `&`, `?`, `!`, `*`, `|`, `^`, `` ` ``,
//!   `#`, `@`, `$`). A run of [`SECRET_RUN`] (16) or more of the remaining characters, or any
//!   run that reaches the end of the inspected window (it may go on), becomes `[redacted]`. A
//!   16-character piece of a JWT-shaped secret in any of the three forms is such a run.
//! - **Known secrets.** When the caller knows what was sent (the assertion), no 16-character
//!   piece of it, raw, URL-encoded or JSON-escaped (compared case-insensitively), may be left:
//!   if one is, the whole snippet is `[redacted]`.

use std::fmt::Write as _;

use zeroize::Zeroizing;

/// Longest snippet of server-provided text kept in an error, in characters.
pub(crate) const SNIPPET_CHARS: usize = 200;

/// Bytes of a body looked at: more than is kept, so that redactions near the cut are seen.
const WINDOW: usize = SNIPPET_CHARS * 4;

/// A run of token-like characters at least this long is treated as a possible secret; no
/// piece of a known secret this long may be kept.
pub(crate) const SECRET_RUN: usize = 16;

const REDACTED: &str = "[redacted]";

/// Characters that separate pieces: they occur in no JWT, base64, percent-encoding or JSON
/// escape, so a secret's piece never spans one.
fn separates(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '"' | '\''
                | '<'
                | '>'
                | '{'
                | '}'
                | '['
                | ']'
                | '('
                | ')'
                | ','
                | ':'
                | ';'
                | '&'
                | '?'
                | '!'
                | '*'
                | '|'
                | '^'
                | '`'
                | '#'
                | '@'
                | '$'
        )
}

/// Makes server-provided text safe to show (see the module docs): lossy UTF-8, control
/// characters and runs of whitespace as one space, token-like runs redacted, truncated to
/// [`SNIPPET_CHARS`] characters.
pub(crate) fn sanitize_snippet(body: &[u8]) -> String {
    sanitize_hiding(body, &[])
}

/// [`sanitize_snippet`], and no 16-character piece of any of `secrets` in what is kept.
pub(crate) fn sanitize_hiding(body: &[u8], secrets: &[&str]) -> String {
    let cut_short = body.len() > WINDOW;
    let head = &body[..body.len().min(WINDOW)];
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len().min(SNIPPET_CHARS + 16));
    let mut pending_space = false;
    let mut run = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if separates(c) {
            flush_run(&mut out, &mut run, false);
            if c.is_whitespace() || c.is_control() {
                pending_space = !out.is_empty();
            } else {
                if std::mem::take(&mut pending_space) {
                    out.push(' ');
                }
                out.push(c);
            }
            continue;
        }
        if std::mem::take(&mut pending_space) && run.is_empty() {
            out.push(' ');
        }
        run.push(c);
        if chars.peek().is_none() {
            // The last run may go on past the window.
            flush_run(&mut out, &mut run, cut_short);
        }
    }
    flush_run(&mut out, &mut run, false);
    if out.chars().count() > SNIPPET_CHARS {
        let cut = out
            .char_indices()
            .nth(SNIPPET_CHARS)
            .map_or(out.len(), |(i, _)| i);
        out.truncate(cut);
        out.push('…');
    }
    if secrets.iter().any(|secret| holds_piece_of(&out, secret)) {
        return REDACTED.to_owned();
    }
    out
}

fn flush_run(out: &mut String, run: &mut String, may_go_on: bool) {
    if run.is_empty() {
        return;
    }
    if may_go_on || run.chars().count() >= SECRET_RUN {
        out.push_str(REDACTED);
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// Whether `text`, or `text` as `Debug` shows it, holds a [`SECRET_RUN`]-character piece of
/// `secret`, raw, URL-encoded or JSON-escaped, in any letter case. `Debug` because it escapes:
/// a secret with a `\\` that a server put into a JSON string unescaped is parsed with one
/// backslash less, and an error's `Debug` would double it again.
///
/// Every copy made here may hold a piece of the secret (or the text a server echoed it in): each
/// is sized once (so that no growing leaves a copy behind) and wiped when dropped.
pub(crate) fn holds_piece_of(text: &str, secret: &str) -> bool {
    let text = Zeroizing::new(text.to_ascii_lowercase());
    // `Debug` writes at most `\u{XXXXXX}` (10 bytes) for one byte, and the quotes.
    let mut shown = Zeroizing::new(String::with_capacity(text.len() * 10 + 2));
    let _ = write!(shown, "{:?}", text.as_str());
    let mut chars = Zeroizing::new(Vec::with_capacity(secret.len()));
    chars.extend(secret.chars());
    chars.windows(SECRET_RUN).any(|window| {
        let mut raw = Zeroizing::new(String::with_capacity(window.len() * 4));
        raw.extend(window);
        let mut forms = [
            Zeroizing::new(raw.to_ascii_lowercase()),
            Zeroizing::new(url_encoded(&raw)),
            Zeroizing::new(json_escaped(&raw)),
        ];
        forms.iter_mut().any(|form| {
            form.make_ascii_lowercase();
            text.contains(form.as_str()) || shown.contains(form.as_str())
        })
    })
}

/// `text` percent-encoded as a form or query value would be (all but unreserved characters).
pub(crate) fn url_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `text` as a JSON string's contents, with `/` escaped too (as many serialisers do).
pub(crate) fn json_escaped(text: &str) -> String {
    // At most six bytes (`\u001f`) for one.
    let mut out = String::with_capacity(text.len() * 6);
    for c in text.chars() {
        match c {
            '/' => out.push_str("\\/"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzUxMiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn a_snippet_is_truncated_and_cleaned() {
        let body = format!("Access\r\n\tDenied\u{0}{}", "x ".repeat(500));
        let snippet = sanitize_snippet(body.as_bytes());
        assert!(snippet.starts_with("Access Denied x x"), "{snippet}");
        assert!(snippet.chars().count() <= SNIPPET_CHARS + 1);
        assert!(!snippet.contains(['\r', '\n', '\t', '\0']));
        assert_eq!(sanitize_snippet(b"Access Denied"), "Access Denied");
        assert_eq!(
            sanitize_snippet(b"  400   Bad Request \n"),
            "400 Bad Request"
        );
        assert_eq!(
            sanitize_snippet(b"<html><title>502 Bad Gateway</title></html>"),
            "<html><title>502 Bad Gateway</title></html>"
        );
    }

    #[test]
    fn token_like_runs_are_redacted_in_every_encoding() {
        for echoed in [
            JWT.to_owned(),
            url_encoded(JWT),
            json_escaped(JWT),
            "abc+def/ghi=jkl0123".to_owned(),
            "abc%2Bdef%2Fghi%3D".to_owned(),
            "abc\\/def\\/ghi\\/jkl".to_owned(),
        ] {
            let snippet = sanitize_snippet(format!("bad token \"{echoed}\" here").as_bytes());
            assert_eq!(snippet, "bad token \"[redacted]\" here", "{echoed}");
        }
        // A short word is no secret.
        assert_eq!(sanitize_snippet(b"invalid_client"), "invalid_client");
    }

    #[test]
    fn a_run_cut_by_the_window_is_redacted_however_short() {
        let mut body = " ".repeat(WINDOW - 10).into_bytes();
        body.extend_from_slice(JWT.as_bytes());
        let snippet = sanitize_snippet(&body);
        assert_eq!(snippet, REDACTED);
    }

    #[test]
    fn looking_for_a_secret_leaves_no_piece_of_it_in_freed_memory() {
        const SECRET: &str =
            "eyjhbgcioijsuzuxmij9.eyjpc3mioijrdc1yzwrhy3qifq.c2lnbmf0dxjllxjlzgfjdc";
        // A piece as text, and the first piece as the `char`s the search takes apart.
        let piece: &'static [u8] = &SECRET.as_bytes()[20..36];
        let chars: &'static [u8] = Box::leak(
            SECRET
                .chars()
                .take(SECRET_RUN)
                .flat_map(|c| u32::from(c).to_le_bytes())
                .collect::<Box<[u8]>>(),
        );
        let echoed = format!("{{\"error\":\"invalid_client\",\"echo\":\"{SECRET}\"}}");
        let found = crate::freed_scan::freed_blocks_holding(&[piece, chars], || {
            assert!(!holds_piece_of(
                "invalid_client: the assertion was refused",
                SECRET
            ));
            assert!(holds_piece_of(&echoed, SECRET));
        });
        assert_eq!(found, 0, "freed blocks held a piece of the secret");
    }

    #[test]
    fn known_secrets_leave_no_piece_in_any_form() {
        // An opaque secret with characters that split runs.
        let secret = "ab!cd#ef$gh@ij(kl)mn*op";
        for echoed in [secret.to_owned(), url_encoded(secret)] {
            let snippet = sanitize_hiding(format!("echo {echoed} end").as_bytes(), &[secret]);
            assert!(!holds_piece_of(&snippet, secret), "{snippet}");
        }
        assert_eq!(
            sanitize_hiding(b"Access Denied", &[secret]),
            "Access Denied"
        );
    }

    #[test]
    fn a_secret_that_debug_would_spell_out_is_found() {
        // Found by `no_piece_of_a_secret_survives_in_an_error`: the server put the secret into
        // a JSON string as is, its `\\` was parsed as one backslash, and an error's `Debug`
        // wrote the secret out again.
        let secret = r"#0A\\#aaAAA0#0A0";
        let parsed = r"#0A\#aaAAA0#0A0";
        assert!(format!("{parsed:?}").contains(secret));
        assert!(holds_piece_of(parsed, secret));
        assert_eq!(sanitize_hiding(parsed.as_bytes(), &[secret]), "[redacted]");
        assert!(!holds_piece_of("Access Denied", secret));
    }
}
