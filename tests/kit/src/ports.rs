//! Free TCP ports, asked of the kernel (bound and released: the race with other processes is
//! negligible on a test machine), so parallel tests and other users of the machine stay apart.

use std::net::{IpAddr, Ipv4Addr, TcpListener};

/// A port the kernel considers free on `ip` right now.
pub fn free_port_on(ip: IpAddr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A free port on 127.0.0.1; panics when there is none (nothing a test could do about it).
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("no free loopback port")
}
