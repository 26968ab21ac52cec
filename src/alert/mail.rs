//! The email channel: lettre's SMTP transport and the envelope from `[email]`. What goes
//! in a mail is [`super::outbox`]'s business.

use anyhow::Context;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::DeliveryError;
use crate::config::{EmailSettings, Security};

/// The SMTP side: a transport and the envelope, no outbox.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    host: String,
    server: String,
    /// The longest one send may take, all of it.
    limit: std::time::Duration,
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
            host: crate::identity::host_name(),
            server: format!("{}:{}", e.smtp_host, e.smtp_port),
            // lettre bounds the TCP connect and each read, but not the wait for the
            // server's greeting: one that accepts the connection and never greets (a
            // tarpit, or one with every worker busy) would hold the send, and with it
            // every later delivery, for ever.
            limit: e.timeout * 2,
        })
    }

    /// The host the agent runs on, as alerts sign off with.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends one mail, in at most twice `email.timeout` in all.
    pub async fn send(&self, subject: &str, body: String) -> Result<(), DeliveryError> {
        let msg = self
            .message(subject, body)
            .map_err(|e| DeliveryError::Compose(crate::errors::line(&e)))?;
        match tokio::time::timeout(self.limit, self.transport.send(msg)).await {
            Ok(sent) => sent.map(drop).map_err(|e| DeliveryError::Smtp {
                server: self.server.clone(),
                detail: crate::errors::line(&anyhow::Error::new(e)),
            }),
            Err(_) => Err(self.stalled()),
        }
    }

    fn stalled(&self) -> DeliveryError {
        DeliveryError::Smtp {
            server: self.server.clone(),
            detail: format!(
                "no answer within {} (the server took the connection but did not greet, \
                 or stalled)",
                crate::human::Secs(self.limit)
            ),
        }
    }

    fn message(&self, subject: &str, body: String) -> anyhow::Result<Message> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .date_now()
            .message_id(None)
            .user_agent(crate::identity::mail_user_agent(&self.host));
        for to in &self.to {
            b = b.to(to.clone());
        }
        Ok(b.header(ContentType::TEXT_PLAIN).body(body)?)
    }

    /// Connects and greets (EHLO, STARTTLS, AUTH) without sending.
    pub async fn test_connection(&self) -> anyhow::Result<()> {
        let ok = tokio::time::timeout(self.limit, self.transport.test_connection())
            .await
            .map_err(|_| self.stalled())?
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
        let resp = tokio::time::timeout(self.limit, self.transport.send(msg))
            .await
            .map_err(|_| self.stalled())?
            .with_context(|| format!("sending a test email through {}", self.server))?;
        Ok(format!(
            "{} {}",
            resp.code(),
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}
