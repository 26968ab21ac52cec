//! What every layer shares: the provider's limit, a snapshot's status, and the ids and
//! names that must not be mixed up.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The provider's limit of snapshots per server.
pub const LIMIT: u32 = 5;
/// What a retention policy may keep: the limit minus room for the snapshot being made.
pub const SLOTS: u32 = LIMIT - 1;

/// A snapshot's state. Unknown values are kept, never a decoding error.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SnapshotStatus {
    InProgress,
    Completed,
    /// A failure state (`failed`, `error`, ...), with the API's word for it.
    Failed(String),
    Unknown(String),
}

impl SnapshotStatus {
    pub fn as_str(&self) -> &str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed(s) | Self::Unknown(s) => s,
        }
    }
}

impl From<&str> for SnapshotStatus {
    fn from(s: &str) -> Self {
        match s {
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" | "error" | "errored" | "failure" => Self::Failed(s.to_string()),
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl std::fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SnapshotStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        Ok(s.as_deref()
            .map_or(Self::Unknown("null".into()), Self::from))
    }
}

impl Serialize for SnapshotStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Ids the API hands out (unsigned 64-bit), stored as the database's signed 64-bit
/// integer with the same bits: an id above 2^63 - 1 is stored negative and read back
/// exactly, on either engine.
/// Why a text is not an id, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError(&'static str);

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for IdError {}

macro_rules! api_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            pub const fn new(id: u64) -> Self {
                Self(id)
            }
            pub const fn get(self) -> u64 {
                self.0
            }
            /// As stored: the same 64 bits, signed.
            pub const fn stored(self) -> i64 {
                self.0 as i64
            }
            /// From what [`Self::stored`] gave.
            pub const fn from_stored(v: i64) -> Self {
                Self(v as u64)
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                Self(id)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.trim().parse().map(Self).map_err(|e: std::num::ParseIntError| {
                    IdError(match e.kind() {
                        std::num::IntErrorKind::PosOverflow => {
                            "too large: ids go up to 18446744073709551615 (2^64 - 1)"
                        }
                        std::num::IntErrorKind::Empty => "empty: give an id, like 802",
                        _ => "not an id: ids are whole numbers written in decimal, like 802 \
                              (as `agent snapshots` lists them)",
                    })
                })
            }
        }

        // Stored as the database's 64-bit integer, on either engine.
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            i64: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <i64 as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <i64 as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            i64: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <i64 as sqlx::Encode<DB>>::encode(self.stored(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            i64: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let v = <i64 as sqlx::Decode<DB>>::decode(value)?;
                Ok(Self::from_stored(v))
            }
        }
    };
}

api_id!(
    /// A VPS.org server.
    ServerId
);
api_id!(
    /// A snapshot, as the API numbers them.
    SnapshotId
);

/// A run in the history.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct RunId(i64);

impl RunId {
    pub const fn new(id: i64) -> Self {
        Self(id)
    }
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AlertKind {
    Failed,
    Recovered,
    Stale,
    NotReadyBeforeWindow,
    Drift,
    NoRoom,
    /// A restore was started (with the way to undo it).
    Restored,
    /// A hook failed without failing its run, or had to be run at the next start.
    Hook,
    /// An agent on the database stopped heartbeating (while this one lives).
    AgentGone,
}

impl AlertKind {
    /// How a subject names it: `FAILED`, `NOT READY BEFORE WINDOW`, ...
    pub fn headline(self) -> &'static str {
        match self {
            AlertKind::Failed => "FAILED",
            AlertKind::Recovered => "RECOVERED",
            AlertKind::Stale => "STALE",
            AlertKind::NotReadyBeforeWindow => "NOT READY BEFORE WINDOW",
            AlertKind::Drift => "DRIFT",
            AlertKind::NoRoom => "NO ROOM",
            AlertKind::Restored => "RESTORED",
            AlertKind::Hook => "HOOK",
            AlertKind::AgentGone => "AGENT GONE",
        }
    }
}

/// A server as the API names it in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerRef {
    pub id: ServerId,
    #[serde(default)]
    pub name: Option<String>,
}

/// A snapshot as the API lists it (the API's wire type, shared by every layer that
/// reasons about snapshots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub server: ServerRef,
    pub name: String,
    pub status: SnapshotStatus,
    #[serde(default)]
    pub size_mb: Option<u64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub description: Option<String>,
}
