//! The JSON lines that the stdout and file sinks write.
//!
//! One object per record, on one line: `{"name": "value", ...}` with the
//! fields in record order. Values are bytes; UTF-8 values become JSON
//! strings and any other value becomes `{"base64": "..."}` (standard
//! alphabet, padded), so binary data survives the trip without being
//! mangled into replacement characters. A field name repeated in the record
//! is repeated in the object (most JSON readers keep the last).
//!
//! Names have no such escape hatch: a JSON object's names are strings. A
//! record with a name that is not UTF-8 is refused (its message is
//! dead-lettered, bytes intact) rather than written with the name altered.

use super::SinkError;
use crate::message::{Record, escape};
use base64::Engine as _;

/// Appends `record` to `out` as one JSON object followed by `\n`. A record
/// with a field name that is not UTF-8 is refused, naming the field
/// (escaped), and `out` is left as it was.
pub fn json_line(out: &mut Vec<u8>, record: &Record) -> Result<(), String> {
    let mut names = Vec::with_capacity(record.fields.len());
    for (name, _) in &record.fields {
        names.push(std::str::from_utf8(name).map_err(|_| {
            format!(
                "field name \"{}\" is not UTF-8: a JSON line cannot carry it unaltered",
                escape(name)
            )
        })?);
    }
    out.push(b'{');
    for (i, (name, (_, value))) in names.into_iter().zip(&record.fields).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, name);
        out.push(b':');
        match std::str::from_utf8(value) {
            Ok(text) => json_string(out, text),
            Err(_) => {
                out.extend_from_slice(br#"{"base64":""#);
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(value)
                        .as_bytes(),
                );
                out.extend_from_slice(br#""}"#);
            }
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// The JSON lines of `records`, and per record whether it was encoded: the
/// stdout and file sinks write the buffer, and a refused record fails alone.
pub(super) fn json_lines(records: &[&Record]) -> (Vec<u8>, Vec<Result<(), SinkError>>) {
    let mut buf = Vec::new();
    let encoded = records
        .iter()
        .map(|r| json_line(&mut buf, r).map_err(SinkError::unrepresentable))
        .collect();
    (buf, encoded)
}

/// Appends `text` as a JSON string, escaped.
fn json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fields: &[(&str, &[u8])]) -> String {
        let record = Record {
            fields: fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
                .collect(),
            to: Some("ignored".into()),
        };
        let mut out = Vec::new();
        json_line(&mut out, &record).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_in_order_as_strings() {
        assert_eq!(
            line(&[("b", b"2"), ("a", b"hello world")]),
            "{\"b\":\"2\",\"a\":\"hello world\"}\n"
        );
    }

    #[test]
    fn escapes_quotes_newlines_and_control_characters() {
        let text = line(&[("k\"ey", b"line1\nline2\t\"q\" \\ \x01 caf\xc3\xa9")]);
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["k\"ey"], "line1\nline2\t\"q\" \\ \u{1} café");
    }

    #[test]
    fn non_utf8_values_as_base64() {
        let text = line(&[("bin", &[0xff, 0x00, 0xfe]), ("ok", b"x")]);
        assert_eq!(text, "{\"bin\":{\"base64\":\"/wD+\"},\"ok\":\"x\"}\n");
    }

    #[test]
    fn no_fields_is_an_empty_object() {
        assert_eq!(line(&[]), "{}\n");
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let text = line(&[("all", &all), ("", b""), ("utf8", "caf\u{e9}\0".as_bytes())]);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let encoded = parsed["all"]["base64"].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, all);
        assert_eq!(parsed[""], "");
        assert_eq!(parsed["utf8"], "caf\u{e9}\0");
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused_and_nothing_written() {
        let record = Record {
            fields: vec![
                (b"ok".to_vec(), b"1".to_vec()),
                (b"bad\xff".to_vec(), b"2".to_vec()),
            ],
            to: None,
        };
        let mut out = b"before\n".to_vec();
        let why = json_line(&mut out, &record).unwrap_err();
        assert!(why.contains(r#""bad\xff""#), "{why}");
        assert_eq!(out, b"before\n");
    }
}
