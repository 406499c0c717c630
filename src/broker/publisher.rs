//! A confirming channel that outlives the broker closing it.
//!
//! RabbitMQ closes a channel for one bad publish — an exchange that is gone (404), a property the
//! broker refuses (406) — and every later publish on it fails. A worker that kept the dead channel
//! would charge, generate and then fail to answer every job until restarted. So the channel is
//! checked before each publish and reopened, once, by whichever publish finds it closed.

use std::sync::{Arc, Mutex, PoisonError};

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use super::BrokerError;

/// Where a publisher's channels come from.
pub(super) enum Source {
    /// Channels on the job connection: reopening a channel leaves the connection alone.
    Shared(Arc<Connection>),
    /// A connection of its own, opened on first use and reopened with the channel: for replies,
    /// whose queue names come from outside and can make the broker close a whole connection.
    Own { url: SecretString, name: String },
}

#[derive(Clone)]
struct Line {
    connection: Arc<Connection>,
    channel: Channel,
}

pub(super) struct Publisher {
    source: Source,
    current: Mutex<Option<Line>>,
    /// One reopening at a time; the others wait for it and use its channel.
    reopening: tokio::sync::Mutex<()>,
}

impl Publisher {
    /// A publisher on the shared connection, with its first channel open.
    pub(super) async fn shared(connection: Arc<Connection>) -> Result<Publisher, BrokerError> {
        let channel = confirming(&connection).await?;
        Ok(Publisher {
            current: Mutex::new(Some(Line {
                connection: connection.clone(),
                channel,
            })),
            source: Source::Shared(connection),
            reopening: tokio::sync::Mutex::new(()),
        })
    }

    /// A publisher with a connection of its own, opened on first use.
    pub(super) fn own(url: SecretString, name: String) -> Publisher {
        Publisher {
            source: Source::Own { url, name },
            current: Mutex::new(None),
            reopening: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Line> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the current channel is open (a publisher not opened yet counts as open).
    pub(super) fn is_open(&self) -> bool {
        match (&self.source, self.current()) {
            (_, Some(line)) => line.channel.status().connected(),
            (Source::Own { .. }, None) => true,
            (Source::Shared(_), None) => false,
        }
    }

    /// The open channel, reopened first if the broker closed it.
    pub(super) async fn channel(&self) -> Result<Channel, BrokerError> {
        if let Some(line) = self.current().filter(|l| l.channel.status().connected()) {
            return Ok(line.channel);
        }
        let _one = self.reopening.lock().await;
        let closed = match self.current() {
            Some(line) if line.channel.status().connected() => return Ok(line.channel),
            other => other,
        };
        let connection = match &self.source {
            Source::Shared(connection) => connection.clone(),
            Source::Own { url, name } => match closed.as_ref() {
                Some(line) if line.connection.status().connected() => line.connection.clone(),
                _ => {
                    if let Some(line) = &closed {
                        let _ = line.connection.close(200, "reopening".into()).await;
                    }
                    let properties =
                        ConnectionProperties::default().with_connection_name(name.as_str().into());
                    Arc::new(Connection::connect(url.expose_secret(), properties).await?)
                }
            },
        };
        let channel = confirming(&connection).await?;
        if let Some(line) = &closed {
            tracing::warn!(
                closed = line.channel.id(),
                opened = channel.id(),
                "the broker had closed the publishing channel; reopened it"
            );
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Line {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Closes a connection of its own (the shared one is closed by its owner).
    pub(super) async fn close(&self) {
        if let (Source::Own { .. }, Some(line)) = (&self.source, self.current()) {
            let _ = line.connection.close(200, "shutting down".into()).await;
        }
    }
}

async fn confirming(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
