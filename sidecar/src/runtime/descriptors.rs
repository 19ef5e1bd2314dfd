//! Fitting the connection bound to the descriptors the process may open (`RLIMIT_NOFILE`).
//!
//! Each client connection can hold two descriptors (its socket and the app's), a recorder whose
//! client left one; listeners, the store, peers and the admin port need a few more. If the limit
//! cannot hold the configured bounds, descriptors run out under load and every `accept` fails,
//! the probes' included, so the kubelet restarts a pod that is only busy. At start the soft
//! limit is raised to the hard one, and if that is still too little the connection bound is
//! lowered to what fits, with a warning saying what to change.

/// Descriptors kept for everything that is not a client connection: listeners, the lifecycle
/// socket, store and peer connections, admin requests, logs.
pub const RESERVE: u64 = 64;

/// What fitting decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fit {
    /// The descriptor limit in force (after raising the soft limit).
    pub limit: u64,
    /// Descriptors the configured bounds need.
    pub needed: u64,
    /// The connection bound to use (the configured one when it fits).
    pub max_connections: usize,
}

/// Descriptors `max_connections` client connections and `max_detached` recorders need.
pub fn needed(max_connections: usize, max_detached: usize) -> u64 {
    2 * max_connections as u64 + max_detached as u64 + RESERVE
}

/// The connection bound that fits `limit` descriptors (pure, for the decision and its tests).
pub fn fit(limit: u64, max_connections: usize, max_detached: usize) -> Fit {
    let needed = needed(max_connections, max_detached);
    let max_connections = if limit >= needed {
        max_connections
    } else {
        let room = limit.saturating_sub(RESERVE + max_detached as u64) / 2;
        (room as usize).clamp(1, max_connections)
    };
    Fit {
        limit,
        needed,
        max_connections,
    }
}

/// Raise the soft descriptor limit to the hard one and fit the connection bound to it. `None`
/// when the limit cannot be read (then nothing is changed).
pub fn fit_process(max_connections: usize, max_detached: usize) -> Option<Fit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(fit(lim.rlim_cur, max_connections, max_detached))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_kept_when_it_fits_and_lowered_when_not() {
        let roomy = fit(1 << 20, 2048, 256);
        assert_eq!(roomy.max_connections, 2048);
        assert_eq!(roomy.needed, 2 * 2048 + 256 + RESERVE);
        let tight = fit(512, 2048, 256);
        assert_eq!(tight.max_connections, (512 - 64 - 256) / 2);
        assert!(needed(tight.max_connections, 256) <= 512);
        assert_eq!(fit(10, 2048, 256).max_connections, 1, "never zero");
    }
}
