//! The listener off loopback: TLS with the operator's certificate (and client
//! certificates for mutual TLS), basic auth against bcrypt hashes, a renewed certificate
//! picked up on SIGHUP, and `check`'s warnings and file checks: all through the binary,
//! scraped by a real TLS client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::cli::{BIN, agent, config, text};
use crate::newcomer::{signal, spawn, wait_for_log};

/// Runs openssl (installed by .ci/run), failing loudly.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, signed by it
/// (P-256: quick to make).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-days",
            "2",
            "-subj",
            "/CN=agent test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(dir, &ca);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let pki = Self {
            dir: dir.to_path_buf(),
        };
        pki.issue("server", "127.0.0.1");
        pki.issue("client", "prometheus");
        pki
    }

    /// `NAME.key` (new) and `NAME.pem`, signed by the CA.
    fn issue(&self, name: &str, cn: &str) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            if name == "client" {
                "client.ext"
            } else {
                "server.ext"
            }
            .to_string(),
        );
        let subj = format!("/CN={cn}");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &subj,
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        self.sign(&csr, &pem, &ext);
    }

    fn sign(&self, csr: &str, pem: &str, ext: &str) {
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                pem,
                "-extfile",
                ext,
            ],
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// A client that trusts only the test CA, presenting the client certificate if asked.
    fn client(&self, with_identity: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.read("ca.pem")).unwrap()])
            .tls_info(true)
            .timeout(Duration::from_secs(10));
        if with_identity {
            let mut id = self.read("client.pem");
            id.extend(self.read("client.key"));
            b = b.identity(reqwest::Identity::from_pem(&id).unwrap());
        }
        b.build().unwrap()
    }
}

/// A bcrypt hash of `password` made by `agent hash-password` (cost 4: quick in tests).
async fn hash_of(password: &str) -> String {
    let mut child = tokio::process::Command::new(BIN)
        .args(["hash-password", "--cost", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$2") && hash.len() == 60, "{hash}");
    assert!(!hash.contains(password));
    hash
}

/// Waits until the listener at `url` answers at all.
async fn wait_until_up(http: &reqwest::Client, url: &str) {
    for _ in 0..300 {
        if http.get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the listener never answered at {url}");
}

/// Waits (bounded) until `want` appears `n` times in `log`.
async fn wait_for_count(log: &Path, want: &str, n: usize) {
    for _ in 0..400 {
        if std::fs::read_to_string(log).is_ok_and(|t| t.matches(want).count() >= n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{want:?} never appeared {n} times:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn peer_certificate(r: &reqwest::Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS connection")
        .to_vec()
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls_guards_every_path_and_a_renewed_certificate_is_served_after_sighup() {
    let s = crate::cli::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let hash = hash_of("scrape-pass").await;
    let port = crate::watch::free_port();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nbasic_auth_users = {{ prometheus = \"{hash}\" }}\n{}",
            crate::cli::JOB
        ),
    );
    let checked = agent(&cfg, &["check"]).await;
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked));
    assert!(
        text(&checked).contains(&format!("listener: https://127.0.0.1:{port}/ (status page), /metrics and /healthz while `agent run` runs (TLS, basic auth)")),
        "{}",
        text(&checked)
    );
    assert!(
        !text(&checked).contains("warning"),
        "loopback: no warning\n{}",
        text(&checked)
    );

    let log = dir.path().join("daemon.log");
    let mut child = spawn(&cfg, &["run"], &log);
    let base = format!("https://127.0.0.1:{port}");
    let http = pki.client(false);
    wait_until_up(&http, &format!("{base}/healthz")).await;
    wait_for_log(
        &log,
        &format!("metrics on https://127.0.0.1:{port}/metrics"),
    )
    .await;

    for path in ["/", "/status.css", "/metrics", "/healthz", "/nope"] {
        let url = format!("{base}{path}");
        let anonymous = http.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path} without credentials");
        assert_eq!(
            anonymous.headers()["www-authenticate"],
            "Basic realm=\"vps-snapshot-agent\", charset=\"UTF-8\""
        );
        assert_eq!(anonymous.headers()["cache-control"], "no-store");
        assert!(anonymous.headers().contains_key("content-security-policy"));
        let wrong = http
            .get(&url)
            .basic_auth("prometheus", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong password");
        let unknown = http
            .get(&url)
            .basic_auth("admin", Some("scrape-pass"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 401, "{path} for an unknown user");
        let body_401 = unknown.text().await.unwrap();
        let right = http
            .get(&url)
            .basic_auth("prometheus", Some("scrape-pass"))
            .send()
            .await
            .unwrap();
        let want = if path == "/nope" { 404 } else { 200 };
        assert_eq!(right.status(), want, "{path} with the right credentials");
        assert_eq!(right.headers()["cache-control"], "no-store", "{path}");
        assert!(
            right.headers().contains_key("content-security-policy"),
            "{path}"
        );
        assert!(!body_401.contains("job"), "a 401 tells nothing: {body_401}");
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .basic_auth("prometheus", Some("scrape-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        peer_certificate(&metrics),
        pem_to_der(&pki.read("server.pem"))
    );
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("vps_snapshot_job_enabled")
    );

    // One address holding idle connections does not shut another out.
    let mut idle = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            idle.push(c);
        }
    }
    let elsewhere = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pki.read("ca.pem")).unwrap()])
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let r = elsewhere
        .get(format!("{base}/healthz"))
        .basic_auth("prometheus", Some("scrape-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "served while 127.0.0.1 holds {} idle connections",
        idle.len()
    );
    drop(idle);

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status())
    );

    // The certificate is renewed in place (same key, a new serial); SIGHUP serves it.
    pki.sign("server.csr", "server-new.pem", "server.ext");
    std::fs::rename(pki.path("server-new.pem"), pki.path("server.pem")).unwrap();
    let renewed = pem_to_der(&pki.read("server.pem"));
    signal(&child, libc::SIGHUP);
    wait_for_log(&log, "configuration reloaded").await;
    let mut served = Vec::new();
    for _ in 0..100 {
        // A fresh client: a new connection, a new handshake.
        let r = pki
            .client(false)
            .get(format!("{base}/healthz"))
            .basic_auth("prometheus", Some("scrape-pass"))
            .send()
            .await
            .unwrap();
        served = peer_certificate(&r);
        if served == renewed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served, renewed,
        "the renewed certificate is served after SIGHUP"
    );

    // A broken renewal keeps the certificate in use and says why; the users change all
    // the same (one removed is refused at once).
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    let other = hash_of("other-pass").await;
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    let with_grafana = cfg_text.replace(
        &format!("prometheus = \"{hash}\""),
        &format!("prometheus = \"{hash}\", grafana = \"{other}\""),
    );
    let kept =
        "the metrics listener keeps its certificate and key: metrics.tls_cert: no PEM certificate";
    for (n, (text_, want)) in [(&with_grafana, 200), (&cfg_text, 401)]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&cfg, text_).unwrap();
        signal(&child, libc::SIGHUP);
        wait_for_count(&log, kept, n + 1).await;
        let mut got = 0;
        for _ in 0..100 {
            got = pki
                .client(false)
                .get(format!("{base}/metrics"))
                .basic_auth("grafana", Some("other-pass"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got, want, "grafana after reload {}", n + 1);
    }
    let still = pki
        .client(false)
        .get(format!("{base}/healthz"))
        .basic_auth("prometheus", Some("scrape-pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
    assert_eq!(peer_certificate(&still), renewed);

    signal(&child, libc::SIGTERM);
    let _ = crate::newcomer::exit_code(&mut child, Duration::from_secs(30)).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        !said.contains("scrape-pass") && !said.contains(&hash),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate_and_healthz_can_stay_open_on_loopback() {
    let s = crate::cli::sim().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let hash = hash_of("mtls-and-a-password").await;
    let port = crate::watch::free_port();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\ntls_min_version = \"1.3\"\nbasic_auth_users = {{ prometheus = \"{hash}\" }}\nhealthz_open_on_loopback = true\n{}",
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            pki.path("ca.pem").display(),
            crate::cli::JOB
        ),
    );
    let log = dir.path().join("daemon.log");
    let mut child = spawn(&cfg, &["run"], &log);
    let base = format!("https://127.0.0.1:{port}");
    let with_cert = pki.client(true);
    wait_until_up(&with_cert, &format!("{base}/healthz")).await;

    let r = with_cert
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "/healthz open to a loopback client when asked"
    );
    let r = with_cert
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the rest still asks for credentials");
    let r = with_cert
        .get(format!("{base}/metrics"))
        .basic_auth("prometheus", Some("mtls-and-a-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let without = pki
        .client(false)
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(
        without.is_err(),
        "no client certificate, no answer: {:?}",
        without.map(|r| r.status())
    );

    signal(&child, libc::SIGTERM);
    let _ = crate::newcomer::exit_code(&mut child, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_an_open_listener_and_verifies_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.issue("other", "127.0.0.1");
    let base = "http://127.0.0.1:9/api/v1";
    let job = crate::cli::JOB;

    let open = config(
        dir.path(),
        base,
        &format!("[metrics]\nlisten = \"0.0.0.0:19464\"\n{job}"),
    );
    let o = agent(&open, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("warning: metrics.listen: 0.0.0.0:19464 is reachable from other hosts without TLS (metrics.tls_cert and tls_key)"), "{t}");
    assert!(t.contains("warning: metrics.listen: 0.0.0.0:19464 is reachable from other hosts without authentication (metrics.basic_auth_users or metrics.client_ca)"), "{t}");

    let guarded = config(
        dir.path(),
        base,
        &format!(
            "[metrics]\nlisten = \"0.0.0.0:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = \"ca.pem\"\n{job}"
        ),
    );
    let o = agent(&guarded, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !text(&o).contains("warning"),
        "TLS and client certificates: {}",
        text(&o)
    );

    let mismatched = config(
        dir.path(),
        base,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"other.key\"\n{job}"
        ),
    );
    let o = agent(&mismatched, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("metrics.tls_cert: the certificate in"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("does not match the key in"),
        "{}",
        text(&o)
    );

    let missing = config(
        dir.path(),
        base,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"gone.key\"\n{job}"
        ),
    );
    let o = agent(&missing, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("metrics.tls_key: cannot read"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("gone.key"), "{}", text(&o));
    // The daemon refuses to start on it the same way.
    let o = agent(&missing, &["run"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(
        text(&o).contains("metrics.tls_key: cannot read"),
        "{}",
        text(&o)
    );

    let plaintext = config(
        dir.path(),
        base,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:19464\"\nbasic_auth_users = {{ prometheus = \"hunter2-password\" }}\n{job}"
        ),
    );
    let o = agent(&plaintext, &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("metrics.basic_auth_users.prometheus: is not a bcrypt hash"),
        "{t}"
    );
    assert!(
        !t.contains("hunter2"),
        "a password written by mistake is never echoed: {t}"
    );
}

#[test]
fn the_documented_web_config_uses_the_same_hashes_as_prometheus() {
    // `promtool check web-config` reads exporter-toolkit's format: the users and hashes
    // the agent takes are the ones Prometheus's own exporters take.
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("scrape-pass", 4).unwrap();
    let web = dir.path().join("web-config.yml");
    std::fs::write(
        &web,
        format!("basic_auth_users:\n  prometheus: \"{hash}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("web-config")
        .arg(&web)
        .output()
        .expect("promtool is installed by .ci/run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(vps_snapshot_agent::config::is_bcrypt_hash(&hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_attack_on_the_listener_found_is_mended() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let base = "http://127.0.0.1:9/api/v1";
    let job = crate::cli::JOB;
    let check = async |metrics: &str| {
        let cfg = config(d, base, &format!("[metrics]\n{metrics}{job}"));
        let o = agent(&cfg, &["check", "--offline"]).await;
        (o.status.code(), text(&o))
    };

    // A key whose line breaks were lost: the error names the problem, never the key.
    let key = std::fs::read_to_string(pki.path("server.key")).unwrap();
    std::fs::write(pki.path("flat.key"), key.replace('\n', " ")).unwrap();
    let (code, t) =
        check("listen = \"127.0.0.1:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"flat.key\"\n")
            .await;
    assert_eq!(code, Some(78), "{t}");
    assert!(t.contains("metrics.tls_key: cannot read"), "{t}");
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for chunk in body.as_bytes().chunks(12) {
        let chunk = std::str::from_utf8(chunk).unwrap();
        assert!(!t.contains(chunk), "the key's content ({chunk}) in: {t}");
    }
    // Nor as the list of its bytes an error's debug form would print.
    assert!(t.matches(", ").count() < 10, "bytes of the file in: {t}");

    // An encrypted key is said to be one.
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "server.key",
            "-aes256",
            "-passout",
            "pass:pw",
            "-out",
            "enc.key",
        ],
    );
    let (code, t) =
        check("listen = \"127.0.0.1:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"enc.key\"\n")
            .await;
    assert_eq!(code, Some(78), "{t}");
    assert!(t.contains("is encrypted"), "{t}");

    // `user:password` pasted as a user name is not echoed.
    let hash = bcrypt::hash("x", 4).unwrap();
    let (code, t) = check(&format!(
        "listen = \"127.0.0.1:19464\"\nbasic_auth_users = {{ \"prom:Sup3rSecretPW\" = \"{hash}\" }}\n"
    ))
    .await;
    assert_eq!(code, Some(78), "{t}");
    assert!(!t.contains("Sup3rSecretPW"), "{t}");

    // Costs outside 4..=16 are refused by name; different costs are warned about.
    let cost = |c: &str| format!("$2y${c}${}", &hash[7..]);
    for (c, want) in [("03", "a bcrypt cost of 3"), ("20", "a bcrypt cost of 20")] {
        let (code, t) = check(&format!(
            "listen = \"127.0.0.1:19464\"\nbasic_auth_users = {{ prom = \"{}\" }}\n",
            cost(c)
        ))
        .await;
        assert_eq!(code, Some(78), "{t}");
        assert!(t.contains(want), "{t}");
    }
    let (code, t) = check(&format!(
        "listen = \"127.0.0.1:19464\"\nbasic_auth_users = {{ prom = \"{}\", cheap = \"{hash}\" }}\n",
        cost("10")
    ))
    .await;
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("the hashes have different costs (4, 10)"), "{t}");

    // An IPv4-mapped loopback address is loopback.
    let (code, t) = check("listen = \"[::ffff:127.0.0.1]:19464\"\n").await;
    assert_eq!(code, Some(0), "{t}");
    assert!(!t.contains("reachable from other hosts"), "{t}");

    // A password past bcrypt's 72 bytes is refused rather than cut.
    let mut child = tokio::process::Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", "A".repeat(80)).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bcrypt reads only the first 72"),
        "{}",
        text(&out)
    );

    // An expired certificate is served, and said to be expired.
    if let Some(lib) = crate::edges::faketime() {
        let cfg = config(
            d,
            base,
            &format!(
                "[metrics]\nlisten = \"127.0.0.1:19464\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n{job}"
            ),
        );
        let o = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["check", "--offline"])
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "+30d")
            .env("AGENT_API__TOKEN", crate::helpers::TOKEN)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(
            text(&o).contains("warning: metrics.tls_cert: the certificate in")
                && text(&o).contains("expired on"),
            "{}",
            text(&o)
        );
    }
}
