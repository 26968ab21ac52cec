//! The email channel: lettre's SMTP transport and the envelope from `[email]`. What goes
//! in a mail is [`super::outbox`]'s business.

use anyhow::Context;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{EmailSettings, Security};

/// The SMTP side: a transport and the envelope, no outbox.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    host: String,
    server: String,
}

/// Builds the SMTP transport from `[email]`.
pub fn transport(e: &EmailSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let builder = match e.security {
        Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.smtp_host)
            .with_context(|| format!("email.smtp_host {:?}", e.smtp_host))?,
        Security::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.smtp_host)
            .with_context(|| format!("email.smtp_host {:?}", e.smtp_host))?,
        Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.smtp_host),
    };
    let mut builder = builder.port(e.smtp_port).timeout(Some(e.timeout));
    if let (Some(user), Some(pass)) = (&e.username, &e.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            pass.expose_secret().to_string(),
        ));
    }
    Ok(builder.build())
}

impl Smtp {
    pub fn new(e: &EmailSettings) -> anyhow::Result<Self> {
        Ok(Self {
            transport: transport(e)?,
            from: e.from.clone(),
            to: e.to.clone(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            server: format!("{}:{}", e.smtp_host, e.smtp_port),
        })
    }

    /// The host the agent runs on, as alerts sign off with.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends one mail.
    pub async fn send(&self, subject: &str, body: String) -> Result<(), String> {
        let msg = self
            .message(subject, body)
            .map_err(|e| format!("cannot build the alert mail: {e}"))?;
        self.transport.send(msg).await.map(drop).map_err(|e| {
            let e = crate::errors::line(&anyhow::Error::new(e));
            format!("SMTP {}: {e}", self.server)
        })
    }

    fn message(&self, subject: &str, body: String) -> anyhow::Result<Message> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .date_now()
            .message_id(None)
            .user_agent(format!(
                "vps-snapshot-agent {} on {}",
                env!("CARGO_PKG_VERSION"),
                self.host
            ));
        for to in &self.to {
            b = b.to(to.clone());
        }
        Ok(b.header(ContentType::TEXT_PLAIN).body(body)?)
    }

    /// Connects and greets (EHLO, STARTTLS, AUTH) without sending.
    pub async fn test_connection(&self) -> anyhow::Result<()> {
        let ok = self
            .transport
            .test_connection()
            .await
            .with_context(|| format!("SMTP server {}", self.server))?;
        anyhow::ensure!(
            ok,
            "SMTP server {} did not accept the connection",
            self.server
        );
        Ok(())
    }

    pub async fn send_test(&self) -> anyhow::Result<String> {
        let msg = self.message(
            "[agent] test email",
            format!(
                "This is a test email from vps-snapshot-agent on {}.\nIf you can read it, alerts will reach you.\n",
                self.host
            ),
        )?;
        let resp = self
            .transport
            .send(msg)
            .await
            .with_context(|| format!("sending a test email through {}", self.server))?;
        Ok(format!(
            "{} {}",
            resp.code(),
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}
