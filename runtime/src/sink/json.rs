//! The JSON lines that the stdout and file sinks write.
//!
//! One object per record, on one line: `{"name": "value", ...}` with the
//! fields in record order. Values are bytes; UTF-8 values become JSON
//! strings and any other value becomes `{"base64": "..."}` (standard
//! alphabet, padded), so binary data survives the trip without being
//! mangled into replacement characters. A field name repeated in the record
//! is repeated in the object (most JSON readers keep the last).

use crate::message::Record;
use base64::Engine as _;

/// Appends `record` to `out` as one JSON object followed by `\n`.
pub fn json_line(out: &mut Vec<u8>, record: &Record) {
    out.push(b'{');
    for (i, (name, value)) in record.fields.iter().enumerate() {
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
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            to: Some("ignored".into()),
        };
        let mut out = Vec::new();
        json_line(&mut out, &record);
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
}
