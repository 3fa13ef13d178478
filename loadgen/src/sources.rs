//! Source address lists: `127.0.0.1`, `127.0.0.1-127.0.0.40`, or a comma list of either.
//! Each source address gives its own ephemeral port range, so N sources pass the ~28k
//! connections-per-destination limit of one.

use std::net::{IpAddr, Ipv4Addr};

pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr =
                    a.trim().parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
                let b: Ipv4Addr =
                    b.trim().parse().map_err(|_| format!("{b:?} is not an IPv4 address"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65535 {
                    return Err(format!("range {part:?} is empty or longer than 65536 addresses"));
                }
                out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
            }
            None => out.push(part.parse().map_err(|_| format!("{part:?} is not an IP address"))?),
        }
    }
    if out.is_empty() {
        return Err("no source address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists() {
        let v = parse_sources("127.0.0.1-127.0.0.3, 127.0.1.9").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_sources("banana").is_err());
        assert!(parse_sources("").is_err());
    }
}
