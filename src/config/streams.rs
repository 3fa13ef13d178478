//! `[[streams]]`: what each stream keeps of its past, by name pattern, from the configuration
//! file. Checked when the file is read, so a bad rule names its table and key.

use std::time::Duration;

use super::units::{parse_duration, parse_size};
use super::ConfigError;

/// One `[[streams]]` table; a missing cap falls back to the `--history-*` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamRule {
    pub(crate) pattern: String,
    /// `ephemeral` or `recoverable`.
    pub(crate) guarantee: String,
    pub(crate) history_size: Option<usize>,
    pub(crate) history_ttl: Option<Duration>,
    pub(crate) history_bytes: Option<u64>,
}

const KEYS: &str = "pattern, guarantee, history_size, history_ttl, history_bytes";

/// Reads the `streams` array of tables of `file`.
pub(crate) fn parse_stream_rules(
    v: &toml::Value,
    file: &str,
) -> Result<Vec<StreamRule>, ConfigError> {
    let err = |i: usize, m: String| ConfigError(format!("{file}: [[streams]] #{}: {m}", i + 1));
    let tables = v.as_array().ok_or_else(|| {
        ConfigError(format!("{file}: `streams` must be an array of tables ([[streams]])"))
    })?;
    let mut rules = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let t = t.as_table().ok_or_else(|| err(i, "must be a table".into()))?;
        let mut rule = StreamRule {
            pattern: String::new(),
            guarantee: "recoverable".into(),
            history_size: None,
            history_ttl: None,
            history_bytes: None,
        };
        for (k, v) in t {
            let text = || match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                _ => Err(err(i, format!("`{k}` must be a string or a number"))),
            };
            match k.replace('-', "_").as_str() {
                "pattern" => rule.pattern = text()?,
                "guarantee" => rule.guarantee = text()?,
                "history_size" => {
                    let n = text()?;
                    rule.history_size = Some(
                        n.parse()
                            .map_err(|_| err(i, format!("history_size {n:?} is not a count")))?,
                    );
                }
                "history_ttl" => {
                    rule.history_ttl = Some(parse_duration(&text()?).map_err(|e| err(i, e))?);
                }
                "history_bytes" => {
                    rule.history_bytes = Some(parse_size(&text()?).map_err(|e| err(i, e))?);
                }
                _ => return Err(err(i, format!("unknown key `{k}`; known keys: {KEYS}"))),
            }
        }
        check_pattern(&rule.pattern).map_err(|m| err(i, m))?;
        match rule.guarantee.as_str() {
            "ephemeral" | "recoverable" => {}
            "durable" if rule.pattern.starts_with("user:") => {}
            "durable" => {
                return Err(err(
                    i,
                    format!(
                        "pattern {:?}: `durable` is for user streams (`user:NAME`, acknowledged \
                         per device, with a mailbox); channels are `recoverable` or `ephemeral`",
                        rule.pattern
                    ),
                ))
            }
            g => {
                return Err(err(
                    i,
                    format!("guarantee {g:?}: use `ephemeral`, `recoverable` or `durable`"),
                ))
            }
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// A pattern is a channel name, `user:` and a user name, or `broadcast`, with `*` for any run.
fn check_pattern(p: &str) -> Result<(), String> {
    let name = p.strip_prefix("user:").unwrap_or(p);
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:@/*".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pattern {p:?}: a channel name, `user:NAME` or `broadcast`, with `*` matching any run \
             (1-128 bytes of A-Z a-z 0-9 _ - . : @ / *)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Result<Vec<StreamRule>, ConfigError> {
        let t: toml::Table = text.parse().unwrap();
        parse_stream_rules(&t["streams"], "f.toml")
    }

    #[test]
    fn rules_read_and_refuse_with_their_table_named() {
        let r = rules(
            "[[streams]]\npattern = \"prices.*\"\nguarantee = \"ephemeral\"\n\
             [[streams]]\npattern = \"user:*\"\nhistory_size = 500\nhistory_ttl = \"10m\"\nhistory-bytes = \"4MiB\"\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].guarantee.as_str(), r[1].history_size), ("ephemeral", Some(500)));
        assert_eq!(r[1].history_ttl, Some(Duration::from_secs(600)));
        assert_eq!(r[1].history_bytes, Some(4 << 20));
        for (bad, says) in [
            ("[[streams]]\nguarantee = \"recoverable\"\n", "pattern \"\""),
            ("[[streams]]\npattern = \"a b\"\n", "pattern \"a b\""),
            ("[[streams]]\npattern = \"x\"\nguarantee = \"durable\"\n", "for user streams"),
            ("[[streams]]\npattern = \"x\"\nguarantee = \"maybe\"\n", "\"maybe\""),
            ("[[streams]]\npattern = \"x\"\nhistory_ttl = \"soon\"\n", "#1"),
            ("[[streams]]\npattern = \"x\"\nsize = 3\n", "unknown key `size`"),
            ("streams = 3\n", "array of tables"),
        ] {
            let e = rules(bad).unwrap_err().0;
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
