//! The address plan. Each "pod" has its own loopback address, so its ports only need to be free
//! on that address (`ssekeeper_testkit::ports::free_port_on`).

use std::net::{IpAddr, Ipv4Addr};

/// The address of pod number `n` (1-based): 127.0.0.(10+n).
pub fn pod_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10u8.saturating_add(n)))
}

/// The source address of client number `n` (0-based): 127.0.1.(1+n), wrapping within the /24.
pub fn client_ip(n: usize) -> IpAddr {
    let host = (n % 254) as u8 + 1;
    let third = 1 + (n / 254) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, third, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        assert_eq!(pod_ip(1).to_string(), "127.0.0.11");
        assert_eq!(client_ip(0).to_string(), "127.0.1.1");
        assert_eq!(client_ip(199).to_string(), "127.0.1.200");
        assert_eq!(client_ip(254).to_string(), "127.0.2.1");
    }
}
