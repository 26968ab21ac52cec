//! Who may read the listener, the way Prometheus exporters do it: TLS with the operator's
//! certificate (and, for mutual TLS, client certificates from their CA), and HTTP basic
//! auth against bcrypt hashes. Built from `[metrics]` at start and again on SIGHUP, so a
//! renewed certificate is picked up without a restart.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};

use base64::Engine as _;
use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{MetricsSettings, TlsFiles};

/// What the listener asks of a connection and of each request.
pub struct Access {
    tls: Option<TlsAcceptor>,
    users: BTreeMap<String, String>,
    /// Checked when the user is unknown: the costliest user's own hash, so that an
    /// unknown user and a wrong password cost the same bcrypt work and cannot be told
    /// apart by timing (the config warns when the users' costs differ).
    decoy: String,
    healthz_open_on_loopback: bool,
    /// Fingerprints of credentials already verified: a scrape every 15 s would otherwise
    /// pay a bcrypt verification (tens of milliseconds of CPU) each time.
    granted: Mutex<HashSet<[u8; 32]>>,
    /// One bcrypt verification at a time: a flood of wrong passwords queues here instead
    /// of taking every core (a scraper whose password was verified skips the queue).
    verifying: tokio::sync::Semaphore,
    failures: Mutex<Failures>,
    /// What an operator should know about the files (an expired certificate).
    pub notes: Vec<String>,
}

/// Failed logins since the last warning about them.
#[derive(Default)]
struct Failures {
    count: u64,
    warned: Option<Instant>,
}

/// Failed logins are logged at most this often (with their count), not once each.
const FAILURES_EVERY: Duration = Duration::from_secs(60);

/// A file the listener cannot use, and the key that names it.
#[derive(Debug)]
pub struct AccessError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for AccessError {}

/// The most credentials remembered as verified (more are verified again).
const GRANTED_MAX: usize = 256;

impl Access {
    /// Reads the certificate, key and client CA `[metrics]` names; the errors name the key.
    pub fn load(m: &MetricsSettings) -> Result<Self, AccessError> {
        let (tls, notes) = match &m.tls {
            Some(f) => {
                let (a, notes) = acceptor(f)?;
                (Some(a), notes)
            }
            None => (None, Vec::new()),
        };
        Ok(Self::with(m, tls, notes))
    }

    /// After a SIGHUP: the files as they are now, or, when they cannot be used, the TLS
    /// of `old` with the new users (removing a user never waits for a good certificate).
    pub fn reload(m: &MetricsSettings, old: &Access) -> (Self, Option<AccessError>) {
        match Self::load(m) {
            Ok(a) => (a, None),
            Err(e) => {
                let tls = if m.tls.is_some() {
                    old.tls.clone()
                } else {
                    None
                };
                (Self::with(m, tls, Vec::new()), Some(e))
            }
        }
    }

    fn with(m: &MetricsSettings, tls: Option<TlsAcceptor>, notes: Vec<String>) -> Self {
        let decoy = m
            .basic_auth_users
            .values()
            .max_by_key(|h| h.get(4..6).and_then(|c| c.parse::<u32>().ok()))
            .cloned()
            .unwrap_or_default();
        Self {
            tls,
            users: m.basic_auth_users.clone(),
            decoy,
            healthz_open_on_loopback: m.healthz_open_on_loopback,
            granted: Mutex::default(),
            verifying: tokio::sync::Semaphore::new(1),
            failures: Mutex::default(),
            notes,
        }
    }

    /// `https` or `http`, for the addresses the agent prints.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub(super) fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// Whether a request for `path` from `peer` with this `Authorization` header is let in.
    pub(super) async fn allows(
        self: &Arc<Self>,
        path: &str,
        peer: IpAddr,
        authorization: Option<&HeaderValue>,
    ) -> bool {
        if self.users.is_empty()
            || (path == "/healthz"
                && self.healthz_open_on_loopback
                && peer.to_canonical().is_loopback())
        {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic) else {
            return false;
        };
        let known = self.users.get(&user);
        let hash = known.unwrap_or(&self.decoy).clone();
        let print = fingerprint(&user, &password, &hash);
        if known.is_some() && self.remembered(&print) {
            return true;
        }
        let Ok(_turn) = self.verifying.acquire().await else {
            return false;
        };
        // Non-truncating: bcrypt reads 72 bytes, so a longer password is refused rather
        // than matched on its first 72.
        let verified = tokio::task::spawn_blocking(move || {
            bcrypt::non_truncating_verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let allowed = verified && known.is_some();
        if allowed {
            if let Ok(mut g) = self.granted.lock() {
                if g.len() >= GRANTED_MAX {
                    g.clear();
                }
                g.insert(print);
            }
        } else {
            self.failed(peer);
        }
        allowed
    }

    /// Counts a failed login; says so at most every [`FAILURES_EVERY`] (the user name
    /// is not logged: it may be a password typed in the wrong field).
    fn failed(&self, peer: IpAddr) {
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        f.count += 1;
        if f.warned.is_none_or(|t| t.elapsed() >= FAILURES_EVERY) {
            tracing::warn!(
                "metrics listener: {} failed login(s) since the last report, the latest from {peer}",
                f.count
            );
            f.count = 0;
            f.warned = Some(Instant::now());
        }
    }

    fn remembered(&self, print: &[u8; 32]) -> bool {
        self.granted.lock().is_ok_and(|g| g.contains(print))
    }
}

/// `Basic base64(user:password)`, decoded.
fn basic(h: &HeaderValue) -> Option<(String, String)> {
    let h = h.to_str().ok()?;
    let (scheme, encoded) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// SHA-256 over the user, the password and the hash they were checked against (a new
/// hash after a reload forgets what the old one let in).
fn fingerprint(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let err = |message: String| AccessError { key, message };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| err(format!("cannot read {}: {}", path.display(), pem_error(&e))))?;
    if certs.is_empty() {
        return Err(err(format!(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// What is wrong with a PEM file, in words: never its content (the errors' own text
/// carries the offending bytes, a private key's among them).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::MissingSectionEnd { .. } => {
            "a PEM section has no -----END line (were its line breaks lost?)".into()
        }
        E::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".into(),
        E::Base64Decode(_) => "a PEM section holds something that is not base64".into(),
        E::NoItemsFound => "no PEM section in it".into(),
        _ => "not a PEM file the agent can read".into(),
    }
}

/// A TLS acceptor from the files: the certificate must match the key, the client CA
/// (when set) must hold at least one certificate.
fn acceptor(f: &TlsFiles) -> Result<(TlsAcceptor, Vec<String>), AccessError> {
    let chain = certificates("metrics.tls_cert", &f.cert)?;
    let notes = validity(&f.cert, &chain[0], Utc::now());
    let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| AccessError {
        key: f.key_origin,
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound
                if std::fs::read(&f.key)
                    .is_ok_and(|b| memchr::memmem::find(&b, b"ENCRYPTED").is_some()) =>
            {
                format!(
                    "the key in {} is encrypted (a passphrase): give it unencrypted, readable \
                     by the agent alone (`openssl pkey -in ENCRYPTED -out KEY`), or as the \
                     systemd credential metrics-tls-key",
                    f.key.display()
                )
            }
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "no PEM private key (-----BEGIN PRIVATE KEY-----) in {}",
                f.key.display()
            ),
            e => format!("cannot read {}: {}", f.key.display(), pem_error(&e)),
        },
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if f.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| AccessError {
            key: "metrics.tls_min_version",
            message: e.to_string(),
        })?;
    let builder = match &f.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates("metrics.client_ca", ca)? {
                roots.add(c).map_err(|e| AccessError {
                    key: "metrics.client_ca",
                    message: format!("{}: not a CA certificate rustls accepts: {e}", ca.display()),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| AccessError {
                        key: "metrics.client_ca",
                        message: format!("{}: {e}", ca.display()),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| AccessError {
            key: "metrics.tls_cert",
            message: match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the certificate in {} does not match the key in {}",
                    f.cert.display(),
                    f.key.display()
                ),
                e => format!(
                    "{} with the key in {}: {e}",
                    f.cert.display(),
                    f.key.display()
                ),
            },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), notes))
}

/// A warning when the certificate is not valid at `now` (it is served all the same: a
/// listener that refused to start would stop the snapshots with it).
fn validity(path: &Path, cert: &CertificateDer<'_>, now: DateTime<Utc>) -> Vec<String> {
    let Some((not_before, not_after)) = validity_of(cert) else {
        return Vec::new();
    };
    let at = crate::human::minute;
    if now > not_after {
        vec![format!(
            "metrics.tls_cert: the certificate in {} expired on {}: scrapers refuse it; renew \
             it and reload",
            path.display(),
            at(not_after)
        )]
    } else if now < not_before {
        vec![format!(
            "metrics.tls_cert: the certificate in {} is valid only from {}: scrapers refuse it \
             until then",
            path.display(),
            at(not_before)
        )]
    } else {
        Vec::new()
    }
}

/// notBefore and notAfter from a certificate's DER (RFC 5280: Certificate, then
/// TBSCertificate: [0] version, serial, signature, issuer, validity).
fn validity_of(der: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let ((_, cert), _) = der_item(der, Some(0x30))?;
    let ((_, tbs), _) = der_item(cert, Some(0x30))?;
    let mut rest = tbs;
    if rest.first() == Some(&0xA0) {
        rest = der_item(rest, None)?.1;
    }
    for _ in 0..3 {
        rest = der_item(rest, None)?.1;
    }
    let ((_, validity), _) = der_item(rest, Some(0x30))?;
    let ((t1, not_before), rest) = der_item(validity, None)?;
    let ((t2, not_after), _) = der_item(rest, None)?;
    Some((der_time(t1, not_before)?, der_time(t2, not_after)?))
}

/// A DER item's tag and content.
type Der<'a> = (u8, &'a [u8]);

/// One DER item of `tag` (any when `None`), and what follows it.
fn der_item(b: &[u8], tag: Option<u8>) -> Option<(Der<'_>, &[u8])> {
    let (&t, b) = b.split_first()?;
    if tag.is_some_and(|want| want != t) {
        return None;
    }
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| ((t, &b[..len]), &b[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, b: &[u8]) -> Option<DateTime<Utc>> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    let full = match tag {
        0x17 => {
            let yy: u32 = s.get(..2)?.parse().ok()?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        0x18 => s.to_string(),
        _ => return None,
    };
    NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn basic_credentials_are_decoded_whatever_the_scheme_case() {
        let enc = base64::engine::general_purpose::STANDARD.encode("prom:pa:ss");
        assert_eq!(
            basic(&header(&format!("basic {enc}"))),
            Some(("prom".into(), "pa:ss".into()))
        );
        assert_eq!(basic(&header(&format!("Bearer {enc}"))), None);
        assert_eq!(basic(&header("Basic !!!")), None);
    }

    #[tokio::test]
    async fn a_wrong_password_and_an_unknown_user_are_both_refused() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let m = MetricsSettings {
            listen: None,
            textfile: None,
            tls: None,
            basic_auth_users: [("prom".to_string(), hash)].into(),
            healthz_open_on_loopback: true,
        };
        let a = Arc::new(Access::load(&m).unwrap());
        assert_eq!(
            a.decoy, m.basic_auth_users["prom"],
            "the costliest user's own hash"
        );
        let b64 = |s: &str| {
            header(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
        };
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(
            a.allows("/metrics", remote, Some(&b64("prom:secret")))
                .await
        );
        assert!(
            a.allows("/metrics", remote, Some(&b64("prom:secret")))
                .await,
            "remembered"
        );
        assert!(!a.allows("/metrics", remote, Some(&b64("prom:wrong"))).await);
        assert!(
            !a.allows("/metrics", remote, Some(&b64("nobody:secret")))
                .await
        );
        assert!(!a.allows("/metrics", remote, None).await);
        let long = format!("prom:{}", "s".repeat(80));
        assert!(
            !a.allows("/metrics", remote, Some(&b64(&long))).await,
            "past 72 bytes"
        );
        assert!(a.allows("/healthz", local, None).await);
        assert!(
            a.allows("/healthz", "::ffff:127.0.0.1".parse().unwrap(), None)
                .await
        );
        assert!(!a.allows("/healthz", remote, None).await);
        assert!(!a.allows("/", local, None).await);
    }
}
