//! `[[api_keys]]`: the API's keys, each with scopes and an optional expiry, given as the
//! SHA-256 of the key (`ringcast hash-key` prints one), so the file never holds a key itself.
//! Checked when the file is read, so a bad table names itself and its key.

use super::ConfigError;

/// What a key may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `publish:<pattern>`: publish to channels matching the pattern (`*` matches any run).
    Publish(String),
    Push,
    Send,
    Broadcast,
    Kick,
    /// Queries and stats (`GET /v1/...`).
    Read,
    /// `GET /metrics`.
    Metrics,
    /// Everything.
    Admin,
}

impl Scope {
    pub(crate) fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "push" => Scope::Push,
            "send" => Scope::Send,
            "broadcast" => Scope::Broadcast,
            "kick" => Scope::Kick,
            "read" => Scope::Read,
            "metrics" => Scope::Metrics,
            "admin" => Scope::Admin,
            _ => {
                let p = s.strip_prefix("publish:")?;
                let ok = !p.is_empty()
                    && p.len() <= 128
                    && p.bytes()
                        .all(|b| b == b'*' || b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b));
                return ok.then(|| Scope::Publish(p.to_string()));
            }
        })
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Scope::Publish(p) => format!("publish:{p}"),
            Scope::Push => "push".into(),
            Scope::Send => "send".into(),
            Scope::Broadcast => "broadcast".into(),
            Scope::Kick => "kick".into(),
            Scope::Read => "read".into(),
            Scope::Metrics => "metrics".into(),
            Scope::Admin => "admin".into(),
        }
    }
}

/// One `[[api_keys]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiKeyRule {
    pub(crate) name: String,
    pub(crate) sha256: [u8; 32],
    pub(crate) scopes: Vec<Scope>,
    /// Unix ms after which the key is refused.
    pub(crate) expires_ms: Option<u64>,
}

const KEYS: &str = "name, sha256, scopes, expires";
const SCOPES: &str = "publish:<pattern>, push, send, broadcast, kick, read, metrics, admin";

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 timestamp (`2027-06-30T00:00:00Z`, fractions and `±hh:mm` offsets allowed)
/// as Unix ms.
pub(crate) fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        ms = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(o.as_bytes()[0], b'+' | b'-') && o.as_bytes()[3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs * 1000 + ms).ok()
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads the `api_keys` array of tables of `file`.
pub(crate) fn parse_api_keys(v: &toml::Value, file: &str) -> Result<Vec<ApiKeyRule>, ConfigError> {
    let err = |i: usize, m: String| ConfigError(format!("{file}: [[api_keys]] #{}: {m}", i + 1));
    let tables = v.as_array().ok_or_else(|| {
        ConfigError(format!("{file}: `api_keys` must be an array of tables ([[api_keys]])"))
    })?;
    let mut out: Vec<ApiKeyRule> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let t = t.as_table().ok_or_else(|| err(i, "must be a table".into()))?;
        let (mut name, mut sha, mut scopes, mut expires) = (None, None, None, None);
        for (k, v) in t {
            let text = || v.as_str().ok_or_else(|| err(i, format!("`{k}` must be a string")));
            match k.as_str() {
                "name" => name = Some(text()?.to_string()),
                "sha256" => {
                    let h = hex32(&text()?.to_ascii_lowercase()).ok_or_else(|| {
                        err(
                            i,
                            "sha256 must be 64 hex digits (ringcast hash-key prints them)".into(),
                        )
                    })?;
                    sha = Some(h);
                }
                "scopes" => {
                    let list = v
                        .as_array()
                        .ok_or_else(|| err(i, "`scopes` must be an array of strings".into()))?;
                    let mut s = Vec::with_capacity(list.len());
                    for x in list {
                        let x = x
                            .as_str()
                            .ok_or_else(|| err(i, "`scopes` must be an array of strings".into()))?;
                        s.push(Scope::parse(x).ok_or_else(|| {
                            err(i, format!("unknown scope {x:?}; scopes are {SCOPES}"))
                        })?);
                    }
                    scopes = Some(s);
                }
                "expires" => {
                    let e = text()?;
                    expires = Some(parse_rfc3339(e).ok_or_else(|| {
                        err(
                            i,
                            format!("expires {e:?} is not an RFC 3339 time (2027-06-30T00:00:00Z)"),
                        )
                    })?);
                }
                _ => return Err(err(i, format!("unknown key `{k}`; known keys: {KEYS}"))),
            }
        }
        let name =
            name.filter(|n| !n.is_empty()).ok_or_else(|| err(i, "`name` is required".into()))?;
        let sha256 = sha.ok_or_else(|| err(i, "`sha256` is required".into()))?;
        let scopes = scopes
            .filter(|s| !s.is_empty())
            .ok_or_else(|| err(i, format!("`scopes` is required (some of {SCOPES})")))?;
        if out.iter().any(|k| k.name == name) {
            return Err(err(i, format!("the name {name:?} is used twice")));
        }
        if out.iter().any(|k| k.sha256 == sha256) {
            return Err(err(i, "the same key hash is listed twice".into()));
        }
        out.push(ApiKeyRule { name, sha256, scopes, expires_ms: expires });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-06-30T00:00:00Z"), Some(1_814_313_600_000));
        assert_eq!(parse_rfc3339("2027-06-30T02:00:00.5+02:00"), Some(1_814_313_600_500));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2027-06-30",
            "2027-13-01T00:00:00Z",
            "2027-06-30T00:00:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn tables_are_checked_and_name_their_fault() {
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let parse =
            |t: &str| parse_api_keys(&t.parse::<toml::Table>().unwrap()["api_keys"], "f.toml");
        let ok = parse(&format!(
            "[[api_keys]]\nname = \"billing\"\nsha256 = \"{h}\"\nscopes = [\"push\", \"publish:orders.*\"]\nexpires = \"2027-06-30T00:00:00Z\""
        ))
        .unwrap();
        assert_eq!(ok[0].scopes, [Scope::Push, Scope::Publish("orders.*".into())]);
        assert_eq!(ok[0].expires_ms, Some(1_814_313_600_000));
        assert_eq!(ok[0].sha256[0], 0x9f);
        for (t, want) in [
            (format!("[[api_keys]]\nsha256 = \"{h}\"\nscopes = [\"push\"]"), "`name` is required"),
            ("[[api_keys]]\nname = \"a\"\nsha256 = \"12\"\nscopes = [\"push\"]".into(), "64 hex digits"),
            (format!("[[api_keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"root\"]"), "unknown scope \"root\""),
            (format!("[[api_keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = []"), "`scopes` is required"),
            (format!("[[api_keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"push\"]\nexpires = \"soon\""), "RFC 3339"),
            (format!("[[api_keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"push\"]\nkey = \"x\""), "unknown key `key`"),
            (format!("[[api_keys]]\nname = \"a\"\nsha256 = \"{h}\"\nscopes = [\"push\"]\n[[api_keys]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"push\"]", h.replace('9', "8")), "used twice"),
        ] {
            let e = parse(&t).unwrap_err().0;
            assert!(e.contains(want) && e.starts_with("f.toml: [[api_keys]] #"), "{e}");
        }
    }
}
