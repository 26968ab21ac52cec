//! What the agent must never show: the API token, the database and SMTP passwords, and the
//! path and query of every URL it posts to (a Healthchecks check, a webhook, a Slack or
//! ntfy channel is addressed by a secret path). They are registered in one process-wide
//! set when the configuration is read (and when an API client is made), and every text
//! that comes from outside — a receiver's answer, a hook's output, an error — is scrubbed
//! with it before anything keeps or shows it; every log line is scrubbed again on its way
//! out. A hook's environment loses every variable that holds one. (The API's own answers
//! are scrubbed of the token alone, by the client: they are data the agent acts on, and a
//! password that happened to equal a job's name must not hide its snapshots' names.)

use std::borrow::Cow;
use std::sync::{LazyLock, RwLock};

use aho_corasick::AhoCorasick;
use url::Url;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// A fragment this long of a secret, at the edge of a text cut short, counts as the
/// secret: a 48-character token cut after its first 8 characters still leaks 40.
pub const FRAGMENT: usize = 8;

/// Secrets shorter than this are not registered (they would scrub ordinary words).
const SHORTEST: usize = 4;

/// Every form of every secret registered so far, and automata that find them all in one
/// pass over a text.
#[derive(Default)]
struct Registry {
    forms: Vec<Vec<u8>>,
    all: Scrubber,
    /// Those of [`FRAGMENT`] characters or more.
    long: Option<AhoCorasick>,
}

static SECRETS: LazyLock<RwLock<Registry>> = LazyLock::new(RwLock::default);

fn read() -> std::sync::RwLockReadGuard<'static, Registry> {
    SECRETS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn automaton<'a>(forms: impl IntoIterator<Item = &'a Vec<u8>>) -> Option<AhoCorasick> {
    let forms: Vec<&Vec<u8>> = forms.into_iter().collect();
    if forms.is_empty() {
        return None;
    }
    // Case aside: an echo may upper-case a secret, or percent-encode it in lower case.
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(forms)
        .ok()
}

/// Finds a set of secrets' forms in a text and replaces each stretch they cover (forms
/// overlapping or touching count as one) with [`REDACTED`].
#[derive(Default)]
pub struct Scrubber(Option<AhoCorasick>);

impl Scrubber {
    pub fn new(forms: &[Vec<u8>]) -> Self {
        Self(automaton(forms))
    }

    pub fn is_match(&self, bytes: &[u8]) -> bool {
        self.0.as_ref().is_some_and(|ac| ac.is_match(bytes))
    }

    pub fn scrub<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(ac) = self.0.as_ref().filter(|ac| ac.is_match(bytes)) else {
            return Cow::Borrowed(bytes);
        };
        let mut covered: Vec<(usize, usize)> = Vec::new();
        for m in ac.find_overlapping_iter(bytes) {
            match covered.last_mut() {
                Some(last) if m.start() <= last.1 => last.1 = last.1.max(m.end()),
                _ => covered.push((m.start(), m.end())),
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        for (start, end) in covered {
            out.extend_from_slice(&bytes[at..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            at = end;
        }
        out.extend_from_slice(&bytes[at..]);
        Cow::Owned(out)
    }
}

fn add_all(forms: Vec<String>) {
    let mut r = SECRETS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = r.forms.len();
    for form in forms {
        if form.len() < SHORTEST || form == REDACTED {
            continue;
        }
        let form = form.into_bytes();
        if !r.forms.contains(&form) {
            r.forms.push(form);
        }
    }
    if r.forms.len() == before {
        return;
    }
    r.all = Scrubber::new(&r.forms);
    r.long = automaton(r.forms.iter().filter(|f| f.len() >= FRAGMENT));
}

/// The forms an answer or an output may carry `secret` in: as is, JSON-escaped (in part
/// or wholly, `\u002d`), with escaped slashes, percent-encoded and -decoded, as HTML
/// entities, in base64 (at each of the three alignments it may fall on inside a longer
/// encoded text), and, with `stretches`, every stretch of [`FRAGMENT`] characters of it
/// (a token split across two lines, or cut, still shows no 8 characters of itself; not
/// for a URL's path, whose words, like a check's slug, are a job's name too).
pub fn forms_of(secret: &str, stretches: bool) -> Vec<String> {
    use base64::Engine as _;
    let secret = secret.trim();
    if secret.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![secret.to_string()];
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json.trim_matches('"').to_string());
    }
    forms.push(secret.replace('/', "\\/"));
    forms.push(
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    );
    if let Ok(decoded) = percent_encoding::percent_decode_str(secret).decode_utf8() {
        forms.push(decoded.into_owned());
    }
    if secret.is_ascii() {
        forms.push(
            secret
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect(),
        );
        let entity = |hex: bool| -> String {
            secret
                .chars()
                .map(|c| match (c.is_ascii_alphanumeric(), hex) {
                    (true, _) => c.to_string(),
                    (false, false) => format!("&#{};", c as u32),
                    (false, true) => format!("&#x{:x};", c as u32),
                })
                .collect()
        };
        forms.push(entity(false));
        forms.push(entity(true));
    }
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for k in 0..3usize {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(secret.as_bytes());
            let enc = engine.encode(&bytes);
            // The characters the padding bytes touch, and the last (partial) group,
            // depend on what surrounds the secret: the middle does not.
            let skip = (k * 4).div_ceil(3);
            if enc.len() > skip + 3 {
                forms.push(enc[skip..enc.len() - 3].to_string());
            }
        }
    }
    let chars: Vec<char> = secret.chars().collect();
    if stretches && chars.len() > FRAGMENT {
        for w in chars.windows(FRAGMENT) {
            forms.push(w.iter().collect());
        }
    }
    forms.retain(|f| f.len() >= SHORTEST);
    forms.sort();
    forms.dedup();
    forms
}

/// Registers a token or a password in every form of [`forms_of`].
pub fn register(secret: &str) {
    add_all(forms_of(secret, true));
}

/// Registers part of a URL (its path, a query value) in the forms of [`forms_of`] but
/// the stretches.
fn register_part(part: &str) {
    add_all(forms_of(part, false));
}

/// Registers every segment of `url`'s path: an ntfy topic is its own secret (whoever
/// knows it reads the channel), however plain a word it is.
pub fn register_topic(url: &Url) {
    for segment in url.path().split('/').filter(|s| s.len() >= SHORTEST) {
        register_part(segment);
    }
}

/// Registers the forms an SMTP login takes on the wire (`AUTH PLAIN` sends base64 of
/// `\0user\0password`, `AUTH LOGIN` base64 of the password alone), which a server may
/// echo in its answer.
pub fn register_smtp_login(user: &str, password: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    register(&b64.encode(format!("\0{user}\0{password}")));
    register(&b64.encode(password));
}

/// Whether a URL's path segment or query value looks like a key (a UUID, a Slack or
/// Discord token, a Healthchecks ping key), not a word (a check's slug, `services`): it
/// is registered alone too, since a receiver may echo it without the rest of the path.
fn key_like(part: &str) -> bool {
    part.len() >= 24 || (part.len() >= 16 && part.chars().any(|c| c.is_ascii_digit()))
}

/// Registers what of `url` is secret: its path and query whole, each path segment and
/// query value that looks like a key, and its password if it has one.
pub fn register_url(url: &Url) {
    let path = url.path();
    if path.len() > 1 {
        register_part(path);
        register_part(path.trim_end_matches('/'));
        for segment in path.split('/').filter(|s| key_like(s)) {
            register_part(segment);
        }
    }
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        register_part(query);
        // A query value is a key more often than not (`sig=`, `key=`, `token=`).
        for (_, value) in url.query_pairs().filter(|(_, v)| v.len() >= 6) {
            register_part(&value);
        }
    }
    if let Some(password) = url.password() {
        register(password);
        // reqwest sends a URL's login as `Authorization: Basic base64(user:password)`,
        // which a receiver may echo back; the password as written may be percent-encoded.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (user, password) = (decode(url.username()), decode(password));
        register(&password);
        register(&b64.encode(format!("{user}:{password}")));
    }
}

/// Whether `text` holds a registered secret of [`FRAGMENT`] characters or more (what a
/// hook's environment is filtered by: a short one would match ordinary values like
/// `PATH`).
pub fn contains(text: &[u8]) -> bool {
    read().long.as_ref().is_some_and(|ac| ac.is_match(text))
}

/// `bytes` with every registered secret replaced by [`REDACTED`].
pub fn scrub_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    match read().all.scrub(bytes) {
        Cow::Borrowed(_) => Cow::Borrowed(bytes),
        Cow::Owned(o) => Cow::Owned(o),
    }
}

/// `text` with every registered secret replaced by [`REDACTED`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    match scrub_bytes(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
    }
}

/// [`scrub`] for a text that may have been cut out of a longer one: a secret cut at
/// either edge (a suffix of [`FRAGMENT`] characters or more at its start, a prefix at its
/// end) is replaced too.
pub fn scrub_cut(text: &str) -> String {
    let mut out = scrub(text).into_owned();
    let r = read();
    for secret in r.forms.iter().filter(|s| s.len() > FRAGMENT) {
        let longest = (secret.len() - 1).min(out.len());
        if let Some(k) = (FRAGMENT..=longest)
            .rev()
            .find(|&k| out.as_bytes().starts_with(&secret[secret.len() - k..]))
        {
            out.replace_range(..boundary_after(&out, k), REDACTED);
        }
        let longest = (secret.len() - 1).min(out.len());
        if let Some(k) = (FRAGMENT..=longest)
            .rev()
            .find(|&k| out.as_bytes().ends_with(&secret[..k]))
        {
            let from = boundary_before(&out, out.len() - k);
            out.replace_range(from.., REDACTED);
        }
    }
    out
}

/// The first character boundary of `s` at or after `i`.
fn boundary_after(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The last character boundary of `s` at or before `i`.
fn boundary_before(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What names the receiver at `url` in messages: its host and port, never its path or
/// query (the secret part).
pub fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// `url` as the agent shows it: scheme, host and port, and `/…` for a path or query.
pub fn shown_url(url: &Url) -> String {
    let path = if url.path().len() > 1 || url.query().is_some() {
        "/…"
    } else {
        ""
    };
    format!("{}://{}{path}", url.scheme(), host_of(url))
}

/// A log writer that scrubs what it is handed (tracing writes one event per call).
pub struct Scrubbing<W>(pub W);

impl<W: std::io::Write> std::io::Write for Scrubbing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&scrub_bytes(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_by_its_host_and_its_path_and_query_are_secrets() {
        let url =
            Url::parse("https://hc.example.com:8443/ping/0f3c9d2e-77aa-4bb1?k=v1v2v3v4v5").unwrap();
        assert_eq!(shown_url(&url), "https://hc.example.com:8443/…");
        register_url(&url);
        let s = scrub("Cannot POST /ping/0f3c9d2e-77aa-4bb1?k=v1v2v3v4v5");
        assert_eq!(s, "Cannot POST [redacted]?[redacted]");
        let s = scrub("no check 0f3c9d2e-77aa-4bb1 here");
        assert_eq!(s, "no check [redacted] here", "a key-like segment alone");
        // A check's slug is a word, not a key: a job of that name stays readable.
        register_url(
            &Url::parse("https://hc.example.com/KEY0KEY1KEY2KEY3/web-01-nightly").unwrap(),
        );
        assert_eq!(
            scrub("job web-01-nightly failed"),
            "job web-01-nightly failed"
        );
    }

    #[test]
    fn a_secret_cut_at_either_edge_is_scrubbed_from_eight_characters_on() {
        let token = "edge-token-3b9e51c07d2a4f6e8a1b5c9d0e2f4a6b8c0d2e4f";
        register(token);
        let head = format!("{}\nrest of the output", &token[8..]);
        let s = scrub_cut(&head);
        assert!(s.starts_with(REDACTED), "{s}");
        assert!(!s.contains(&token[20..30]), "{s}");
        let tail = format!("output ends with {}", &token[..12]);
        assert_eq!(scrub_cut(&tail), format!("output ends with {REDACTED}"));
        // Shorter than a fragment: ordinary text, kept.
        let short = format!("{} and more", &token[token.len() - 5..]);
        assert_eq!(scrub_cut(&short), short);
    }

    #[test]
    fn every_form_of_a_secret_is_replaced_and_other_text_kept() {
        register("pass/word+1");
        let s = scrub(r#"{"a":"pass\/word+1","b":"pass%2Fword%2B1"} pass/word+1"#);
        assert_eq!(s, r#"{"a":"[redacted]","b":"[redacted]"} [redacted]"#);
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
    }
}
