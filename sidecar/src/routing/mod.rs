//! What a request is and where it goes: a resume, a request for a session another pod owns
//! (forwarded, signed), or one for the app.

pub mod forward;
pub mod handler;
pub mod owner;
pub mod tunnel;
