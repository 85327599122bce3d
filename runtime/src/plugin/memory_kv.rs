//! The key-value store of `sluice plugin test`: in memory, for one
//! instance, with Redis's semantics for what a plugin can observe (TTLs,
//! set-if-absent, integer increments), so a stateful plugin can be tried
//! without Redis.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Values and their expiry times.
#[derive(Default)]
pub struct MemoryKv(HashMap<String, (Vec<u8>, Option<Instant>)>);

impl MemoryKv {
    /// The live value at `key`, dropping it if it expired.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.0.get(key) {
            Some((_, Some(at))) if *at <= Instant::now() => {
                self.0.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Stores `value`, expiring `ttl_ms` from now if given.
    pub fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        let expiry = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.0.insert(key, (value, expiry));
    }

    /// [`MemoryKv::set`] only if `key` holds nothing live; whether it stored.
    pub fn set_new(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        if self.get(&key).is_some() {
            return false;
        }
        self.set(key, value, ttl_ms);
        true
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// Adds `by` to the integer at `key` (missing: 0), keeping its expiry,
    /// and fails as Redis's INCRBY does on a value that is not an integer.
    pub fn incr(&mut self, key: &str, by: i64) -> Result<i64, String> {
        let current = match self.get(key) {
            None => 0,
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or("ERR value is not an integer or out of range")?,
        };
        let next = current
            .checked_add(by)
            .ok_or("ERR increment or decrement would overflow")?;
        let expiry = self.0.get(key).and_then(|(_, at)| *at);
        self.0
            .insert(key.to_string(), (next.to_string().into_bytes(), expiry));
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_redis_for_a_plugin() {
        let mut kv = MemoryKv::default();
        assert_eq!(kv.incr("n", 2), Ok(2));
        assert_eq!(kv.incr("n", -5), Ok(-3));
        assert!(kv.set_new("a".into(), b"1".to_vec(), None));
        assert!(!kv.set_new("a".into(), b"2".to_vec(), None));
        assert_eq!(kv.get("a"), Some(b"1".to_vec()));
        assert!(kv.incr("a", 1).is_ok());
        kv.set("s".into(), b"x".to_vec(), None);
        assert!(kv.incr("s", 1).is_err());
        kv.delete("a");
        assert_eq!(kv.get("a"), None);
        kv.set("t".into(), b"x".to_vec(), Some(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("t"), None, "expired");
        assert!(
            kv.set_new("t".into(), b"y".to_vec(), None),
            "an expired key is absent"
        );
    }
}
