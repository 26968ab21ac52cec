//! The agent's snapshots: how it names them, marks them, tells its own from everyone
//! else's, and what each one's verdict is. Pure functions over a listing (plus the journal
//! for ownership); a run, the commands and the status page all ask here.

pub mod mark;
pub mod naming;
pub mod ownership;
pub mod verdicts;

pub use ownership::{candidates, owners, owners_and_pins};
