//! Who may read the listener, the way Prometheus exporters do it: TLS with the operator's
//! certificate (and, for mutual TLS, client certificates from their CA), and HTTP basic
//! auth against bcrypt hashes. Built from `[metrics]` at start and again on SIGHUP, so a
//! renewed certificate is picked up without a restart.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

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
    /// Checked when the user is unknown, so that an unknown user and a wrong password
    /// cost the same bcrypt work and cannot be told apart by timing.
    decoy: String,
    healthz_open_on_loopback: bool,
    /// Fingerprints of credentials already verified: a scrape every 15 s would otherwise
    /// pay a bcrypt verification (tens of milliseconds of CPU) each time.
    granted: Mutex<HashSet<[u8; 32]>>,
}

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
        let tls = m.tls.as_ref().map(acceptor).transpose()?;
        let cost = m
            .basic_auth_users
            .values()
            .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
            .max();
        let decoy = match cost {
            Some(cost) => bcrypt::hash_with_salt(b"decoy", cost, fastrand_salt())
                .map(|h| h.format_for_version(bcrypt::Version::TwoY))
                .map_err(|e| AccessError {
                    key: "metrics.basic_auth_users",
                    message: e.to_string(),
                })?,
            None => String::new(),
        };
        Ok(Self {
            tls,
            users: m.basic_auth_users.clone(),
            decoy,
            healthz_open_on_loopback: m.healthz_open_on_loopback,
            granted: Mutex::default(),
        })
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
        let verified = tokio::task::spawn_blocking(move || {
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let allowed = verified && known.is_some();
        if allowed && let Ok(mut g) = self.granted.lock() {
            if g.len() >= GRANTED_MAX {
                g.clear();
            }
            g.insert(print);
        }
        allowed
    }

    fn remembered(&self, print: &[u8; 32]) -> bool {
        self.granted.lock().is_ok_and(|g| g.contains(print))
    }
}

impl Default for Access {
    /// No TLS, no credentials: the listener as it is on loopback by default.
    fn default() -> Self {
        Self {
            tls: None,
            users: BTreeMap::new(),
            decoy: String::new(),
            healthz_open_on_loopback: false,
            granted: Mutex::default(),
        }
    }
}

/// A salt for the decoy hash: never compared with anything a user sent as a hash, so
/// it need not be secret, only of the right shape.
fn fastrand_salt() -> [u8; 16] {
    std::array::from_fn(|_| fastrand::u8(..))
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

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        e => format!("not a PEM file ({e:?})"),
    }
}

/// A TLS acceptor from the files: the certificate must match the key, the client CA
/// (when set) must hold at least one certificate.
fn acceptor(f: &TlsFiles) -> Result<TlsAcceptor, AccessError> {
    let chain = certificates("metrics.tls_cert", &f.cert)?;
    let key = PrivateKeyDer::from_pem_file(&f.key).map_err(|e| AccessError {
        key: f.key_origin,
        message: match e {
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
    Ok(TlsAcceptor::from(Arc::new(config)))
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
        assert!(a.decoy.starts_with("$2y$04$"), "{}", a.decoy);
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
        assert!(a.allows("/healthz", local, None).await);
        assert!(
            a.allows("/healthz", "::ffff:127.0.0.1".parse().unwrap(), None)
                .await
        );
        assert!(!a.allows("/healthz", remote, None).await);
        assert!(!a.allows("/", local, None).await);
    }
}
