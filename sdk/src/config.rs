use std::fmt::Display;
use std::str::FromStr;

/// The pipeline's `[processor.config]` table, values as text.
///
/// ```
/// use sluice_sdk::Config;
///
/// let config: Config = [("field", "payload"), ("limit", "10")].into_iter().collect();
/// assert_eq!(config.get_or("field", "body"), "payload");
/// assert_eq!(config.parse_or("limit", 100u32), Ok(10));
/// assert_eq!(config.parse_or("missing", 100u32), Ok(100));
/// assert!(config.parse::<bool>("limit").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing config key `{key}`"))
    }

    /// The value of `key` parsed as `T`: `Ok(None)` when it is not set, an
    /// error naming the key and the value when it does not parse.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(key)
            .map(|value| {
                value
                    .parse()
                    .map_err(|e| format!("config key `{key}`: invalid value `{value}`: {e}"))
            })
            .transpose()
    }

    /// The value of `key` parsed as `T`, or `default` when it is not set.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// Every key and value, in the order the runtime passed them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }
}

/// Builds a config from pairs, as a test would.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let entries = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Config { entries }
    }
}
