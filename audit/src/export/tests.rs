use super::*;
use crate::fixture::{allowed, by, in_repo};
use crate::reader::{Position, RawRecord};

fn raw(record: Record) -> RawRecord {
    RawRecord {
        start: Position::default(),
        end: Position::default(),
        line: serde_json::to_string(&record).unwrap(),
        record,
    }
}

#[test]
fn jsonl_is_the_journal_line() {
    let r = raw(allowed(Some("github.com"), "198.51.100.1:443"));
    let mut w = Writer::new(Format::Jsonl, Vec::new()).unwrap();
    w.write(&r).unwrap();
    let out = w.finish().unwrap();
    assert_eq!(out, format!("{}\n", r.line).into_bytes());
}

#[test]
fn csv_has_a_header_and_quotes_what_needs_it() {
    let mut rec = in_repo(
        by(allowed(Some("github.com"), "198.51.100.1:443"), "c,u\"rl"),
        "acme/web",
    );
    rec.ts = "2026-11-26T21:58:13.123456Z".parse().unwrap();
    rec.id = "01JDQ6Z3K4ZV9Y8X7W6V5T4S3R".parse().unwrap();
    rec.detail = Some("two\nlines".into());
    let mut w = Writer::new(Format::Csv, Vec::new()).unwrap();
    w.write(&raw(rec)).unwrap();
    let out = String::from_utf8(w.finish().unwrap()).unwrap();
    let mut lines = out.splitn(2, '\n');
    assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
    assert_eq!(
        lines.next().unwrap(),
        "1,01JDQ6Z3K4ZV9Y8X7W6V5T4S3R,2026-11-26T21:58:13.123456Z,runner-1,acme/web,,,,,tcp,allow,,rule_allow,allow[0],github.com,sni,198.51.100.1:443,10.1.0.2:40000,4242,\"c,u\"\"rl\",,,,,,,\"two\nlines\"\n"
    );
}
