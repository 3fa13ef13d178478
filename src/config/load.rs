//! Loading: defaults, then the `--config` TOML file, then `RINGCAST_*` variables, then flags,
//! with where each value came from (for `ringcast check-config`). A file key is a flag's long
//! name; `[[streams]]`, `[[api_keys]]` and `[[upstreams]]` tables are read by their own modules.

use super::api_keys::{parse_api_keys, ApiKeyRule};
use super::streams::{parse_stream_rules, StreamRule};
use super::upstreams::{self, parse_upstreams, UpstreamRule};
use super::{Config, ConfigError};

/// Where an effective setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// A loaded configuration, with the source of every setting.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// (key, value as given, source), in flag order.
    pub settings: Vec<(String, String, Source)>,
}

fn file_value(key: &str, v: &toml::Value, file: &str) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) => Ok(s.clone()),
                _ => Err(ConfigError(format!("{file}: key `{key}`: the list must hold strings"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        _ => Err(ConfigError(format!(
            "{file}: key `{key}`: expected a string, number, boolean or list of strings"
        ))),
    }
}

impl Config {
    /// Loads defaults, then the `--config` file, then the environment, then `args` (which
    /// start with the program name), and validates the result.
    pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cmd = Config::command();
        let plain = cmd
            .clone()
            .try_get_matches_from(&args)
            .map_err(|e| ConfigError(e.render().to_string()))?;
        let file = plain.get_one::<std::path::PathBuf>("config").cloned();
        let mut argv: Vec<std::ffi::OsString> =
            vec![args.first().cloned().unwrap_or_else(|| "ringcast".into())];
        let mut from_file: Vec<String> = Vec::new();
        let mut stream_rules: Vec<StreamRule> = Vec::new();
        let mut api_keys: Vec<ApiKeyRule> = Vec::new();
        let mut upstream_rules: Vec<UpstreamRule> = Vec::new();
        if let Some(path) = &file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {name}: {e}")))?;
            let table: toml::Table =
                text.parse().map_err(|e| ConfigError(format!("{name} is not valid TOML: {e}")))?;
            let known: Vec<(&str, &str)> = cmd
                .get_arguments()
                .filter_map(|a| Some((a.get_id().as_str(), a.get_long()?)))
                .filter(|(id, _)| *id != "config")
                .collect();
            // An `[overload]` table's keys are the `overload-*` flags (its `memory_budget`,
            // the flag of that name).
            let mut entries: Vec<(String, &toml::Value)> = Vec::new();
            for (key, value) in &table {
                match (key.as_str(), value.as_table()) {
                    ("overload", Some(t)) => {
                        for (k, v) in t {
                            let k = k.replace('_', "-");
                            let name = match k.as_str() {
                                "memory-budget" | "overload" => k,
                                _ => format!("overload-{k}"),
                            };
                            entries.push((name, v));
                        }
                    }
                    _ => entries.push((key.clone(), value)),
                }
            }
            for (key, value) in entries {
                let (key, value) = (&key, value);
                if key == "streams" {
                    stream_rules = parse_stream_rules(value, &name)?;
                    continue;
                }
                if key == "api_keys" {
                    api_keys = parse_api_keys(value, &name)?;
                    continue;
                }
                if key == "upstreams" {
                    upstream_rules = parse_upstreams(value, &name)?;
                    continue;
                }
                let long = key.replace('_', "-");
                let Some((id, long)) = known.iter().find(|(_, l)| *l == long) else {
                    let mut names: Vec<&str> = known.iter().map(|(_, l)| *l).collect();
                    names.sort_unstable();
                    return Err(ConfigError(format!(
                        "{name}: unknown key `{key}`; known keys: {}",
                        names.join(", ")
                    )));
                };
                let env = format!("RINGCAST_{}", id.to_uppercase());
                if std::env::var_os(&env).is_some() {
                    continue; // the environment beats the file
                }
                let v = file_value(key, value, &name)?;
                // Check the file's values alone first, so an error names the file.
                let one = [argv[0].clone(), format!("--{long}").into(), v.clone().into()];
                if let Err(e) = cmd.clone().try_get_matches_from(one) {
                    let msg = e.render().to_string();
                    let first =
                        msg.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
                    return Err(ConfigError(format!("{name}: key `{key}`: {first}")));
                }
                argv.push(format!("--{long}").into());
                argv.push(v.into());
                from_file.push(id.to_string());
            }
        }
        argv.extend(args.iter().skip(1).cloned());
        let matches = cmd
            .clone()
            .try_get_matches_from(&argv)
            .map_err(|e| ConfigError(e.render().to_string()))?;
        let mut config =
            Config::from_arg_matches(&matches).map_err(|e| ConfigError(e.render().to_string()))?;
        config.history.streams = stream_rules;
        config.api.api_keys = api_keys;
        config.two_way.upstreams = upstream_rules;
        config.validate()?;
        let mut settings = Vec::new();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            let Some(long) = a.get_long() else { continue };
            let source = match plain.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                Some(clap::parser::ValueSource::EnvVariable) => Source::Env,
                _ if from_file.iter().any(|f| f == id) => Source::File,
                _ => Source::Default,
            };
            let value: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let shown = if (id == "api_key" || id == "session_key") && !value.is_empty() {
                "<set>".to_string()
            } else {
                value.join(",")
            };
            settings.push((long.to_string(), shown, source));
        }
        for r in &config.history.streams {
            settings.push(("[[streams]]".to_string(), describe(r), Source::File));
        }
        for k in &config.api.api_keys {
            let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
            let scopes: Vec<String> = k.scopes.iter().map(|s| quote(&s.name())).collect();
            let mut v = format!("name = {}\nscopes = [{}]", quote(&k.name), scopes.join(", "));
            if let Some(e) = k.expires_ms {
                v.push_str(&format!("\n# expires at Unix ms {e}; the hash is not shown"));
            }
            settings.push(("[[api_keys]]".to_string(), v, Source::File));
        }
        for u in &config.two_way.upstreams {
            settings.push(("[[upstreams]]".to_string(), upstreams::describe(u), Source::File));
        }
        Ok(Loaded { config, settings })
    }
}

fn describe(r: &StreamRule) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut parts = vec![
        format!("pattern = {}", quote(&r.pattern)),
        format!("guarantee = {}", quote(&r.guarantee)),
    ];
    if let Some(n) = r.history_size {
        parts.push(format!("history_size = {n}"));
    }
    if let Some(d) = r.history_ttl {
        parts.push(format!("history_ttl = \"{}ms\"", d.as_millis()));
    }
    if let Some(b) = r.history_bytes {
        parts.push(format!("history_bytes = {b}"));
    }
    parts.join("\n")
}

/// Renders the effective configuration as TOML, with each value's source.
pub fn render(settings: &[(String, String, Source)]) -> String {
    let mut out = String::from("# effective ringcast configuration (value  # source)\n");
    for (k, v, src) in settings {
        if k == "config" {
            continue;
        }
        if k == "[[streams]]" || k == "[[api_keys]]" || k == "[[upstreams]]" {
            out.push_str(&format!("{k}  # {}\n{v}\n", src.as_str()));
            continue;
        }
        let quoted = toml::Value::String(v.clone()).to_string();
        out.push_str(&format!("{k} = {quoted}  # {}\n", src.as_str()));
    }
    out
}
