//! Where a session's requests must go: here, another live pod, or nowhere (the owner is gone).

use std::net::SocketAddr;

use crate::cursor::SessionId;
use crate::session::Sessions;
use crate::store::SessionStore as _;

/// Where a session lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// This pod holds it.
    Local,
    /// Another pod holds it; forward to its admin address.
    Remote {
        /// The owner's admin address.
        addr: SocketAddr,
        /// The owner's name (for logs).
        owner: String,
    },
    /// Nobody holds it (the owner is gone, or it never existed).
    Gone,
    /// The store did not answer: serve here, without routing.
    Unknown,
}

/// Find the session's owner: this pod's own leases first (no store call), then the store.
pub async fn locate(shared: &Sessions, session: &SessionId) -> Location {
    if shared.book.touch(session) {
        return Location::Local;
    }
    if !shared.store.is_up() {
        // Known down: do not make every request wait for a timeout.
        return Location::Unknown;
    }
    let r = shared.store.lease(session).await;
    let me = shared.book.owner();
    match r {
        Ok(None) => Location::Gone,
        Ok(Some(lease)) if lease.owner == me.name || lease.addr == me.addr => Location::Local,
        Ok(Some(lease)) => Location::Remote {
            addr: lease.addr,
            owner: lease.owner,
        },
        Err(_) => Location::Unknown,
    }
}
