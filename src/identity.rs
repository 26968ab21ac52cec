//! Who this agent is to the outside: the box's name (in alerts, mails, the status page,
//! and each process's owner identity) and the `User-Agent` its HTTP requests carry.

/// The box's host name, as the operator knows it (read once per call: a rename of the
/// host shows in what is said next).
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The `User-Agent` of every HTTP request: the API's and the receivers'.
pub const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));
