//! Sessions: the recorder (the one task that owns a session's upstream), resume and takeover,
//! replay from the store, the leases this pod holds, and the gates of keyed requests.

pub mod broadcast;
mod context;
mod fresh;
pub mod gates;
pub mod leases;
pub mod recorder;
pub mod replay;
pub mod resume;

pub use self::context::Sessions;
