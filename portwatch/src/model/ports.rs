//! Port arguments: `5050`, `5050-5052`, `5050,5051`, and any mix of them.
use std::{collections::BTreeSet, fmt};

/// A parsed set of ports, sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(BTreeSet<u16>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortError(String);

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PortError {}

/// Parses one port number: 1-65535.
pub fn parse_port(s: &str) -> Result<u16, PortError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(PortError("empty port (expected 1-65535)".into()));
    }
    if t.starts_with('-') {
        return Err(PortError(format!("invalid port '{t}': negative (expected 1-65535)")));
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError(format!("invalid port '{t}': not a number (expected 1-65535)")));
    }
    match t.parse::<u32>() {
        Ok(0) => Err(PortError("invalid port '0': ports are 1-65535".into())),
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err(PortError(format!("invalid port '{t}': out of range (expected 1-65535)"))),
    }
}

impl PortSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `5050`, `5050-5052` or a comma list of those.
    pub fn parse(spec: &str) -> Result<Self, PortError> {
        let mut set = Self::new();
        set.add_spec(spec)?;
        Ok(set)
    }

    pub fn add_spec(&mut self, spec: &str) -> Result<(), PortError> {
        if spec.trim().is_empty() {
            return Err(PortError("empty port (expected 1-65535)".into()));
        }
        for part in spec.split(',') {
            let part = part.trim();
            // A leading '-' is a negative number, not a range.
            match part.get(1..).and_then(|rest| rest.find('-')).map(|i| i + 1) {
                Some(i) => {
                    let lo = parse_port(&part[..i])?;
                    let hi = parse_port(&part[i + 1..])?;
                    if lo > hi {
                        return Err(PortError(format!("invalid range '{part}': {lo} > {hi}")));
                    }
                    self.0.extend(lo..=hi);
                }
                None => {
                    self.0.insert(parse_port(part)?);
                }
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, port: u16) {
        self.0.insert(port);
    }

    pub fn extend(&mut self, other: &Self) {
        self.0.extend(other.0.iter().copied());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// clap value parser for a port spec argument.
pub fn clap_port_spec(s: &str) -> Result<PortSet, PortError> {
    PortSet::parse(s)
}

/// Merges several parsed specs into one set.
pub fn merge(specs: &[PortSet]) -> PortSet {
    let mut all = PortSet::new();
    for s in specs {
        all.extend(s);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ports() {
        assert_eq!(parse_port("5050"), Ok(5050));
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("65535"), Ok(65535));
    }

    #[test]
    fn bad_ports_have_clear_messages() {
        assert!(parse_port("0").unwrap_err().to_string().contains("1-65535"));
        assert!(parse_port("70000").unwrap_err().to_string().contains("out of range"));
        assert!(parse_port("abc").unwrap_err().to_string().contains("not a number"));
        assert!(parse_port("-5").unwrap_err().to_string().contains("negative"));
        assert!(parse_port("99999999999999999999").unwrap_err().to_string().contains("out of range"));
        assert!(parse_port("").is_err());
        assert!(parse_port("5 0").is_err());
    }

    #[test]
    fn ranges_and_lists() {
        let s = PortSet::parse("5050-5052,8080").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5050, 5051, 5052, 8080]);
        assert!(PortSet::parse("5052-5050").is_err());
        assert!(PortSet::parse("5050-").is_err());
        assert!(PortSet::parse("-5").is_err());
        assert!(PortSet::parse("1,,2").is_err());
        assert_eq!(PortSet::parse("7,7").unwrap().len(), 1);
    }
}
